"""Exact pixel metrics without holding the maps: P-AUROC, P-AP, P-F1max and AUPRO, accumulated a
batch of maps at a time.

Each pixel becomes one 64-bit key: the order-preserving bits of its float32 score above the id of
the ground-truth region it lies in (0 for a normal pixel). Sorting the keys in place (in parts,
side by side, never merged) orders the pixels by score. The curves' points are then read at the
thresholds that take in a defect pixel, each run of defect-free thresholds between two of them
being one point (it adds the same areas as its thousands of points would), so after the sort the
work scales with the defect pixels: the same areas as
:func:`~costfilter.metrics.ranking.binary_curve` and :func:`~costfilter.metrics.pro.pro_curve`
give over every point. Memory: 8 bytes per pixel, where the two curve functions hold the maps,
the masks, a 64-bit sort order, sorted copies and full-length cumulative sums, each sorting once.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=bool)
_SIGN = np.uint32(0x80000000)
#: sorted keys scanned at a time for defect pixels (bounds the temporaries)
CHUNK = 1 << 22
#: parts the keys are sorted in, side by side (one per core this process may use, at most 4)
PARTS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _write_keys(scores: np.ndarray, dst: np.ndarray) -> None:
    """Write each float32 score's order-preserving bits into the high 32 bits of the uint64
    ``dst`` (low 32 bits zero): unsigned order of the bits is the scores' order, −0.0 counted as
    0.0. Written through a uint32 view of ``dst`` rather than cast and shifted, which took 2.5×
    as long."""
    bits = (np.asarray(scores, dtype=np.float32).ravel() + np.float32(0.0)).view(np.uint32)
    # Negative scores: every bit flipped; others: the sign bit set. One xor with a per-pixel mask.
    flip = (bits.view(np.int32) >> 31).view(np.uint32)
    flip |= _SIGN
    halves = dst.view(np.uint32).reshape(-1, 2)
    high, low = (1, 0) if sys.byteorder == "little" else (0, 1)
    np.bitwise_xor(bits, flip, out=halves[:, high])
    halves[:, low] = 0


class PixelMetrics:
    """``add((B, H, W) maps, (B, H, W) bool masks)`` as often as needed, then ``result()``.

    ``n_pixels``: the total, when known, so the keys are written into one array (no copy when
    they are joined). Results equal :func:`~costfilter.metrics.pixel_metrics` on all the maps at
    once (to float rounding of the summed areas, tested to 1e-9).
    """

    def __init__(self, fpr_limit: float = 0.3, n_pixels: int | None = None):
        self.fpr_limit = fpr_limit
        self._keys = np.empty(n_pixels, dtype=np.uint64) if n_pixels is not None else None
        self._parts: list[np.ndarray] = []
        self._filled = 0
        self._region_sizes = [0]  # region id → its pixel count; id 0 stands for normal pixels

    def add(self, maps: np.ndarray, masks: np.ndarray) -> None:
        maps, masks = np.asarray(maps), np.asarray(masks, dtype=bool)
        if maps.shape != masks.shape or maps.ndim != 3:
            raise ValueError(f"maps {maps.shape} and masks {masks.shape} must be equal (B, H, W) shapes")
        if not np.isfinite(maps).all():
            raise ValueError("anomaly maps must be finite")
        b, n = len(maps), int(np.prod(maps.shape[1:]))
        if self._keys is None:
            dst = np.empty(b * n, dtype=np.uint64)
            self._parts.append(dst)
        else:
            if self._filled + b * n > self._keys.size:
                raise ValueError(f"more than the {self._keys.size} pixels announced")
            dst = self._keys[self._filled : self._filled + b * n]
        # Written in place: scores in the high 32 bits; region ids only where an image has any
        # (most test images have none, and a (B, H, W) id array per batch was most of the cost).
        _write_keys(maps, dst)
        for i in np.flatnonzero(masks.reshape(b, -1).any(axis=1)):
            labels, count = ndimage.label(masks[i], structure=_EIGHT)
            first = len(self._region_sizes)
            self._region_sizes += np.bincount(labels.ravel(), minlength=count + 1)[1:].tolist()
            inside = np.flatnonzero(labels)
            dst[i * n + inside] |= labels.ravel()[inside].astype(np.uint64) + np.uint64(first - 1)
        self._filled += b * n

    def result(self) -> dict[str, float]:
        """P-AUROC, P-AP, P-F1max and AUPRO@``fpr_limit`` (NaN where undefined, as in
        :func:`~costfilter.metrics.pixel_metrics`)."""
        keys = self._parts[0] if len(self._parts) == 1 else (
            np.concatenate(self._parts) if self._parts else self._keys[: self._filled])  # type: ignore[index]
        self._parts = []
        parts = _sorted_parts(keys, PARTS)
        sizes = np.asarray(self._region_sizes, dtype=np.float64)
        weight = np.zeros_like(sizes)
        weight[1:] = 1.0 / sizes[1:]
        positives = int(sizes[1:].sum())
        negatives = keys.size - positives
        nan = float("nan")
        if positives == 0:
            return {"pixel_auroc": nan, "pixel_ap": nan, "pixel_f1max": nan, "aupro": nan}
        tps, fps, ws = _curve_points(parts, weight)
        auroc, ap, f1, pro = _areas(tps, fps, ws / (len(sizes) - 1), positives, negatives, self.fpr_limit)
        return {"pixel_auroc": auroc if negatives else nan, "pixel_ap": ap, "pixel_f1max": f1,
                "aupro": pro if negatives else nan}


def _sorted_parts(keys: np.ndarray, n: int) -> list[np.ndarray]:
    """``keys`` cut into ``n`` contiguous parts, each sorted in place on a thread of its own
    (numpy's sort lets go of the GIL): on 2 cores the 44 M keys of magnetic_tile sort in about
    half the time of one sort. The curves never need the parts merged (:func:`_curve_points`)."""
    parts = np.array_split(keys, max(1, min(n, keys.size)))
    if len(parts) == 1:
        keys.sort()
        return parts
    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        list(pool.map(np.ndarray.sort, parts))
    return parts


def _curve_points(parts: list[np.ndarray], weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The curves' points from the keys, given as sorted parts, highest threshold first:
    cumulative true and false positives and summed region weights ``(G,)`` each.

    Only thresholds that take in a defect pixel change a curve's shape; between two of them the
    false positives grow while everything else stands still, which adds the same areas whether
    it is one point or thousands. So each run of defect-free thresholds is one point, and the
    work is on the defect pixels, not on every pixel: they are gathered from the parts and
    sorted, and how many keys lie above and below each of their scores is counted in every part.
    """
    low32, shift = np.uint64(0xFFFFFFFF), np.uint64(32)
    size = sum(part.size for part in parts)
    # Defect pixels (their low 32 bits hold a region id), highest key first.
    found = np.sort(np.concatenate([part[i : i + CHUNK][(part[i : i + CHUNK] & low32) != 0]
                                    for part in parts for i in range(0, part.size, CHUNK)]))[::-1]
    score = found >> shift
    w = weight[(found & low32).astype(np.intp)]
    # One point per distinct score that holds a defect pixel: its defects, its weight, and the
    # extent of its whole group of tied keys (defect-free pixels with the same score included).
    first = np.r_[0, np.flatnonzero(score[1:] != score[:-1]) + 1]
    group = score[first]
    bottom, top = group << shift, (group << shift) | low32
    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        counts = list(pool.map(lambda part: (np.searchsorted(part, bottom, side="left"),
                                             np.searchsorted(part, top, side="right")), parts))
    lo, hi = sum(c[0] for c in counts), sum(c[1] for c in counts)
    n_pos = np.diff(np.r_[first, len(score)])
    n_neg = (hi - lo) - n_pos
    # Defect-free pixels above each group (and below the last one), as a run of their own.
    above = np.r_[size, lo[:-1]] - hi
    below = int(lo[-1])
    n = len(group)
    # Slots: the run above group g at 2g, group g at 2g + 1, the run below the last group at 2n.
    tp = np.zeros(2 * n + 1, dtype=np.int64)
    fp = np.zeros(2 * n + 1, dtype=np.int64)
    wt = np.zeros(2 * n + 1)
    tp[1::2] = n_pos
    fp[0:-1:2], fp[1::2], fp[-1] = above, n_neg, below
    wt[1::2] = np.add.reduceat(w, first)
    keep = np.ones(2 * n + 1, dtype=bool)
    keep[0::2] = np.r_[above, below] > 0  # an empty run is no point (its precision would be 0 / 0)
    return np.cumsum(tp)[keep], np.cumsum(fp)[keep], np.cumsum(wt)[keep]


def _areas(tps: np.ndarray, fps: np.ndarray, pro: np.ndarray, positives: int, negatives: int, limit: float
           ) -> tuple[float, float, float, float]:
    """AUROC, AP, F1-max and AUPRO@``limit`` from the points of :func:`_curve_points` (``pro``:
    the per-region overlap at each point)."""
    tpr = tps / positives
    fpr = fps / negatives if negatives else np.zeros(len(fps))
    x, y = np.r_[0.0, fpr], np.r_[0.0, tpr]
    auroc = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
    precision = tps / (tps + fps)
    # Recall steps as whole pixel counts, divided once: summed as fractions, AP with every pixel a
    # defect came to 0.9999999999999999, not 1.
    ap = float(np.sum(np.diff(np.r_[0, tps]) * precision)) / positives
    denom = precision + tpr
    f1 = float(np.divide(2 * precision * tpr, denom, out=np.zeros_like(denom), where=denom > 0).max())
    aupro = float("nan")
    if negatives:
        keep = fpr <= limit
        x, y = np.r_[0.0, fpr[keep]], np.r_[0.0, pro[keep]]
        if not keep.all():  # the curve passes the limit: interpolated linearly there
            j = int(np.argmax(~keep))
            if x[-1] < limit:
                x, y = np.r_[x, limit], np.r_[y, y[-1] + (pro[j] - y[-1]) * (limit - x[-1]) / (fpr[j] - x[-1])]
        aupro = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0)) / limit
    return auroc, ap, f1, aupro
