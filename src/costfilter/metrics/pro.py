"""Per-region overlap (PRO) curve and its normalised area up to a false-positive-rate limit.

Definition (MVTec AD): at each threshold, PRO is the mean over all ground-truth connected
regions (8-connectivity) of the fraction of the region's pixels above the threshold; FPR is the
fraction of all normal pixels above it. AUPRO integrates PRO over FPR ∈ [0, limit] (trapezoids,
linear interpolation at the limit) and divides by ``limit``.

Vectorised: every anomalous pixel carries weight 1 / (size of its region), so after one sort by
score the cumulative weight divided by the number of regions is exactly the PRO at each threshold.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=bool)


def pro_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FPR and PRO at every distinct threshold, starting from (0, 0).

    Args:
        maps: ``(N, H, W)`` anomaly scores.
        masks: ``(N, H, W)`` bool ground truth.
    """
    maps = np.asarray(maps)
    masks = np.asarray(masks, dtype=bool)
    if maps.shape != masks.shape:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} differ in shape")
    weights = np.zeros(masks.shape, dtype=np.float64)
    n_regions = 0
    for i in range(masks.shape[0]):
        labels, n = ndimage.label(masks[i], structure=_EIGHT)
        if n:
            sizes = np.bincount(labels.ravel())
            w = 1.0 / sizes.astype(np.float64)
            w[0] = 0.0
            weights[i] = w[labels]
            n_regions += n
    n_normal = int((~masks).sum())
    if n_regions == 0 or n_normal == 0:
        raise ValueError("PRO needs at least one anomalous region and one normal pixel")
    s = maps.ravel()
    order = np.argsort(s, kind="stable")[::-1]
    s = s[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]
    pro = np.cumsum(weights.ravel()[order])[last] / n_regions
    fpr = np.cumsum(~masks.ravel()[order], dtype=np.int64)[last] / n_normal
    return np.r_[0.0, fpr], np.r_[0.0, pro]


def area_up_to(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoidal area under ``pro(fpr)`` on ``[0, limit]``, divided by ``limit``."""
    keep = fpr <= limit
    x, y = fpr[keep], pro[keep]
    if x[-1] < limit and keep.sum() < fpr.size:
        j = int(np.argmax(~keep))  # first point past the limit
        y_lim = y[-1] + (pro[j] - y[-1]) * (limit - x[-1]) / (fpr[j] - x[-1])
        x, y = np.r_[x, limit], np.r_[y, y_lim]
    return float(np.trapezoid(y, x) / limit)


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (1.0 is perfect)."""
    fpr, pro = pro_curve(maps, masks)
    return area_up_to(fpr, pro, fpr_limit)
