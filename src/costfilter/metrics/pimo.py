"""AUPIMO: the area under each anomalous image's per-image overlap (PIMO) curve, at the very low
false-positive rates a line can live with (Bertoldo et al., 2024; anomalib's ``AUPIMO``).

Definition. For a threshold t, the *shared FPR* is the mean over the normal images of each one's
fraction of pixels ≥ t; each anomalous image's TPR is the fraction of its own defect pixels ≥ t.
The PIMO curve of image i is its TPR against the shared FPR on a log axis; AUPIMO_i is its area
over shared FPR ∈ [1e-5, 1e-4] (log axis) divided by ``ln(upper / lower)``, so 1 means every
defect pixel is found before one normal pixel in 100,000 fires. The set's AUPIMO is
the mean over the anomalous images with a non-empty mask.

Computed exactly rather than on a grid of thresholds (anomalib samples 300,000): every distinct
normal score in the range is a vertex of the curve. Between two consecutive ones the shared FPR
jumps and the TPR goes, linearly in log FPR, from the fraction of defect pixels strictly above
the lower one to the fraction at or above it (the two differ only on ties). The integration
range's ends are interpolated linearly in log FPR, so this is the exact area; anomalib snaps the
range's ends to its threshold grid instead, which moves its result by 1e-3 to 1e-2 on MPDD-sized
data. Maps share one size here, so the shared FPR is the pooled FPR of the
normal images' pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: anomalib's default integration range of the shared FPR
FPR_BOUNDS = (1e-5, 1e-4)
#: normal scores held beyond what the result needs before they are cut back to it
SLACK = 1 << 20


@dataclass(frozen=True)
class Aupimo:
    """``per_image`` ``(N,)``: AUPIMO of each anomalous image with a defect pixel, NaN for the
    others; ``mean`` over those; ``n_vertices``: distinct normal scores inside the range (how
    finely the curve is resolved there; anomalib asks for more than 30)."""

    per_image: np.ndarray
    mean: float
    n_vertices: int


def aupimo(maps: np.ndarray, masks: np.ndarray, fpr_bounds: tuple[float, float] = FPR_BOUNDS) -> Aupimo:
    """AUPIMO of ``(N, H, W)`` maps against ``(N, H, W)`` bool masks (images whose mask is empty
    are the normal ones). NaN where it is undefined: no normal or no anomalous image, too few
    normal pixels to reach the lower bound (fewer than ``1 / lower``), or no threshold within the
    normal scores that brings the shared FPR down to it (the highest normal score alone is held by
    more than ``lower`` of the normal pixels, as in capped or 8-bit maps)."""
    acc = AupimoAccumulator(fpr_bounds)
    acc.add(maps, masks)
    return acc.result()


class AupimoAccumulator:
    """:func:`aupimo` a batch at a time: ``add((B, H, W) maps, (B, H, W) bool masks)``, then
    ``result()``. Keeps each anomalous image's defect-pixel scores and, of the normal images'
    pixels, those at or above the ``normal_pixels · upper + 1``-th highest (with its ties) when
    ``normal_pixels`` bounds how many normal pixels will come (an upper bound keeps the result
    exact, e.g. every pixel of every image); else every normal score until the end."""

    def __init__(self, fpr_bounds: tuple[float, float] = FPR_BOUNDS, normal_pixels: int | None = None):
        lo, hi = fpr_bounds
        if not 0 < lo < hi <= 1:
            raise ValueError(f"fpr_bounds must satisfy 0 < lower < upper ≤ 1, got {fpr_bounds}")
        self.bounds = (lo, hi)
        self._bound = normal_pixels
        self._keep = None if normal_pixels is None else int(np.ceil(hi * normal_pixels)) + 1
        self._normal: list[np.ndarray] = []
        self._n_kept = 0
        self._m = 0
        self._positives: list[np.ndarray | None] = []

    def add(self, maps: np.ndarray, masks: np.ndarray) -> None:
        maps, masks = np.asarray(maps, dtype=np.float64), np.asarray(masks, dtype=bool)
        if maps.shape != masks.shape or maps.ndim != 3:
            raise ValueError(f"maps {maps.shape} and masks {masks.shape} must both be (N, H, W)")
        for amap, mask in zip(maps, masks):
            if mask.any():
                self._positives.append(np.sort(amap[mask]))
                continue
            self._positives.append(None)
            self._normal.append(amap.ravel())
            self._m += amap.size
            self._n_kept += amap.size
            if self._bound is not None and self._m > self._bound:
                raise ValueError(f"more than the {self._bound} normal pixels announced")
            if self._keep is not None and self._n_kept > 4 * self._keep + SLACK:
                self._normal = [_top(np.concatenate(self._normal), self._keep)]
                self._n_kept = len(self._normal[0])

    def result(self) -> Aupimo:
        lo, hi = self.bounds
        n = len(self._positives)
        per_image = np.full(n, np.nan)
        m = self._m
        need = int(np.ceil(hi * m)) + 1  # normal pixels that decide the curve up to the upper bound
        anomalous = [i for i, p in enumerate(self._positives) if p is not None]
        if not anomalous or m * lo < 1 or need > m:
            return Aupimo(per_image, float("nan"), 0)
        kept = _top(np.concatenate(self._normal), need)  # every normal score ≥ its smallest, ties too
        top = np.sort(kept)[::-1][:need]
        values, first = np.unique(-top, return_index=True)  # distinct, descending as -values ascend
        u = -values
        counts = np.append(first[1:], len(top)).astype(np.float64)
        counts[-1] = float((kept >= u[-1]).sum())  # the smallest may tie past the first ``need``
        x = counts / m  # shared FPR at threshold u_j, increasing
        if x[0] > lo:  # even the highest normal score fires on more than `lo`: the range's start is not reached
            return Aupimo(per_image, float("nan"), 0)
        x_prev = np.concatenate([[0.0], x[:-1]])
        live = np.minimum(x, hi) > np.maximum(x_prev, lo)  # segments that overlap the range
        xs, xe, xp, xj, uj = (np.maximum(x_prev, lo)[live], np.minimum(x, hi)[live], x_prev[live], x[live],
                              u[live])
        ls, le = np.log(xs), np.log(xe)
        # Where the curve is linear in log FPR (x_prev > 0): how far across its segment each
        # clipped end lies; above every normal pixel (x_prev = 0) the TPR holds flat until x_j.
        l0 = np.log(np.where(xp > 0, xp, 1.0))
        span = np.log(xj) - l0
        fs = np.where(xp > 0, (ls - l0) / np.where(xp > 0, span, 1.0), 0.0)
        fe = np.where(xp > 0, (le - l0) / np.where(xp > 0, span, 1.0), 0.0)
        for i in anomalous:
            pos = self._positives[i]
            assert pos is not None
            y_end = 1.0 - np.searchsorted(pos, uj, side="left") / len(pos)  # TPR at u_j: pixels ≥ u_j
            y_start = 1.0 - np.searchsorted(pos, uj, side="right") / len(pos)  # just above u_j: > u_j
            ys, ye = y_start + (y_end - y_start) * fs, y_start + (y_end - y_start) * fe
            area = float(np.sum(0.5 * (ys + ye) * (le - ls)))
            per_image[i] = min(max(area / np.log(hi / lo), 0.0), 1.0)
        n_vertices = int(((x >= lo) & (x <= hi)).sum())
        return Aupimo(per_image, float(np.mean(per_image[anomalous])), n_vertices)


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """The values at or above the ``k``-th highest (all of them when there are at most ``k``)."""
    if len(values) <= k:
        return values
    return values[values >= np.partition(values, len(values) - k)[len(values) - k]]
