"""Exact pixel metrics without holding the maps: P-AUROC, P-AP, P-F1max and AUPRO, accumulated a
batch of maps at a time.

Each pixel becomes one 64-bit key: the order-preserving bits of its float32 score above the id of
the ground-truth region it lies in (0 for a normal pixel). One in-place sort of the keys orders
the pixels by score, and a walk from the highest score down gives, at every distinct threshold,
the true and false positives and the summed region weights (PRO) — the same points as
:func:`~costfilter.metrics.ranking.binary_curve` and :func:`~costfilter.metrics.pro.pro_curve`,
whose areas are added up chunk by chunk instead of being kept. Memory: 8 bytes per pixel plus a
bounded chunk, where the two curve functions hold the maps, the masks, a 64-bit sort order,
sorted copies and full-length cumulative sums, each sorting once.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=bool)
_SIGN = np.uint32(0x80000000)
#: pixels walked at a time after the sort (bounds the temporaries to ~200 MB)
CHUNK = 1 << 22


def _orderable(scores: np.ndarray) -> np.ndarray:
    """float32 scores → uint32 whose unsigned order is the scores' order (−0.0 counted as 0.0)."""
    bits = (np.asarray(scores, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


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
        dst[:] = _orderable(maps).ravel()
        dst <<= np.uint64(32)
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
        keys.sort()
        sizes = np.asarray(self._region_sizes, dtype=np.float64)
        weight = np.zeros_like(sizes)
        weight[1:] = 1.0 / sizes[1:]
        n_regions = len(sizes) - 1
        positives = int(sizes[1:].sum())
        negatives = keys.size - positives
        nan = float("nan")
        if positives == 0:
            return {"pixel_auroc": nan, "pixel_ap": nan, "pixel_f1max": nan, "aupro": nan}
        walk = _Walk(positives, negatives, n_regions, self.fpr_limit)
        low32 = np.uint64(0xFFFFFFFF)
        end = keys.size
        while end > 0:
            start = max(0, end - CHUNK)
            chunk = keys[start:end][::-1]  # highest score first
            score = chunk >> np.uint64(32)
            # a threshold's group ends where the next (lower) score differs, or the keys end
            last = np.flatnonzero(score[1:] != score[:-1])
            if start == 0 or (keys[start - 1] >> np.uint64(32)) != score[-1]:
                last = np.r_[last, len(chunk) - 1]
            positive = np.flatnonzero(chunk & low32)  # defect pixels are few: counted, not summed
            walk.add(len(chunk), positive, weight[(chunk[positive] & low32).astype(np.intp)], last)
            end = start
        auroc = walk.auroc if negatives else nan
        return {"pixel_auroc": auroc, "pixel_ap": walk.ap, "pixel_f1max": walk.f1,
                "aupro": walk.aupro if negatives else nan}


class _Walk:
    """Areas under the ROC, precision-recall and PRO curves, added up from the points (cumulative
    counts at each threshold's last pixel) of one chunk at a time, highest threshold first."""

    def __init__(self, positives: int, negatives: int, n_regions: int, limit: float):
        self.p, self.n, self.regions, self.limit = positives, negatives, n_regions, limit
        self.tp = self.fp = self.prev_tp = 0
        self.w = 0.0
        self.prev_fpr = self.prev_pro = 0.0
        self.auroc = self.ap_sum = self.f1 = self.pro_area = 0.0
        self.pro_done = False

    def add(self, n: int, positive: np.ndarray, weights: np.ndarray, last: np.ndarray) -> None:
        """A chunk of ``n`` pixels in walking order: the sorted indices of its ``positive`` ones
        (their region ``weights``) and the index ``last`` of each threshold's final pixel in it."""
        summed = np.concatenate([[0.0], np.cumsum(weights)])
        k = np.searchsorted(positive, last, side="right")  # positives up to each threshold's end
        tps, fps, ws = self.tp + k, self.fp + (last + 1 - k), self.w + summed[k]
        self.tp, self.fp, self.w = self.tp + len(positive), self.fp + n - len(positive), self.w + float(summed[-1])
        if not len(last):
            return  # one threshold's pixels continue into the next chunk
        tpr = tps / self.p
        fpr = fps / self.n if self.n else np.zeros(len(fps))
        x, y = np.r_[self.prev_fpr, fpr], np.r_[self.prev_tp / self.p, tpr]
        self.auroc += float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
        precision = tps / (tps + fps)
        # Recall steps as whole pixel counts, divided once at the end (``ap``): summing the steps
        # as fractions rounds: with every pixel a defect (precision 1 throughout) AP came to
        # 0.9999999999999999, not 1.
        self.ap_sum += float(np.sum(np.diff(np.r_[self.prev_tp, tps]) * precision))
        denom = precision + tpr
        f1 = np.divide(2 * precision * tpr, denom, out=np.zeros_like(denom), where=denom > 0)
        self.f1 = max(self.f1, float(f1.max()))
        if not self.pro_done and self.n:
            self._pro(fpr, ws / self.regions)
        self.prev_fpr, self.prev_tp = float(fpr[-1]), int(tps[-1])

    def _pro(self, fpr: np.ndarray, pro: np.ndarray) -> None:
        """PRO's area over FPR ∈ [0, limit], with the curve interpolated linearly at the limit."""
        keep = fpr <= self.limit
        x, y = np.r_[self.prev_fpr, fpr[keep]], np.r_[self.prev_pro, pro[keep]]
        if not keep.all():  # the curve passes the limit in this chunk
            j = int(np.argmax(~keep))
            if x[-1] < self.limit:
                y_lim = y[-1] + (pro[j] - y[-1]) * (self.limit - x[-1]) / (fpr[j] - x[-1])
                x, y = np.r_[x, self.limit], np.r_[y, y_lim]
            self.pro_done = True
        self.pro_area += float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
        self.prev_pro = float(y[-1])

    @property
    def ap(self) -> float:
        return self.ap_sum / self.p

    @property
    def aupro(self) -> float:
        return self.pro_area / self.limit
