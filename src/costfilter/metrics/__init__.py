"""Image and pixel metrics: AUROC, AP, F1-max, AUPRO. Nothing here knows about models."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .pro import aupro, pro_curve
from .ranking import BinaryCurve, auroc, average_precision, binary_curve, f1_max

IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1max")
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")


def image_metrics(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> dict[str, float]:
    """I-AUROC, I-AP and I-F1max of image scores against 0/1 labels."""
    c = binary_curve(np.asarray(scores, dtype=np.float64), np.asarray(labels))
    return {"image_auroc": auroc(c), "image_ap": average_precision(c), "image_f1max": f1_max(c)[0]}


def pixel_metrics(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> dict[str, float]:
    """P-AUROC, P-AP, P-F1max and AUPRO@``fpr_limit`` of ``(N, H, W)`` maps against bool masks."""
    c = binary_curve(maps, masks)
    out = {"pixel_auroc": auroc(c), "pixel_ap": average_precision(c), "pixel_f1max": f1_max(c)[0]}
    # PRO needs a defect region and a normal pixel; without both (every mask empty, or every mask
    # covering its whole image) it is undefined, as AUROC then is.
    out["aupro"] = aupro(maps, masks, fpr_limit) if c.positives and c.negatives else float("nan")
    return out


__all__ = [
    "IMAGE_METRICS",
    "PIXEL_METRICS",
    "BinaryCurve",
    "aupro",
    "auroc",
    "average_precision",
    "binary_curve",
    "f1_max",
    "image_metrics",
    "pixel_metrics",
    "pro_curve",
]
