"""Threshold-free ranking metrics from one sort: AUROC, AP, F1-max.

Exact to scikit-learn's ``roc_auc_score`` / ``average_precision_score`` (tested); written by
hand because the pixel case sorts tens of millions of scores once and derives all three.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BinaryCurve:
    """Cumulative true and false positives at each distinct threshold, highest threshold first."""

    thresholds: np.ndarray
    tps: np.ndarray
    fps: np.ndarray
    positives: int
    negatives: int


def binary_curve(scores: np.ndarray, labels: np.ndarray) -> BinaryCurve:
    """Build the curve of ``scores`` (higher = more anomalous) against 0/1 ``labels``."""
    scores = np.asarray(scores).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in size")
    order = np.argsort(scores, kind="stable")[::-1]
    s = scores[order]
    y = labels[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]
    tps = np.cumsum(y, dtype=np.int64)[last]
    fps = (last + 1) - tps
    return BinaryCurve(s[last], tps, fps, int(y.sum()), int(y.size - y.sum()))


def auroc(curve: BinaryCurve) -> float:
    """Area under the ROC curve (NaN if one class is absent)."""
    if curve.positives == 0 or curve.negatives == 0:
        return float("nan")
    tpr = np.r_[0.0, curve.tps / curve.positives]
    fpr = np.r_[0.0, curve.fps / curve.negatives]
    return float(np.trapezoid(tpr, fpr))


def average_precision(curve: BinaryCurve) -> float:
    """Step-wise average precision, Σ (Rₙ − Rₙ₋₁) Pₙ (NaN without positives)."""
    if curve.positives == 0:
        return float("nan")
    precision = curve.tps / (curve.tps + curve.fps)
    recall = curve.tps / curve.positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1_max(curve: BinaryCurve) -> tuple[float, float]:
    """Best F1 over all thresholds and the threshold that gives it (``score >= t`` is positive)."""
    if curve.positives == 0:
        return float("nan"), float("nan")
    precision = curve.tps / (curve.tps + curve.fps)
    recall = curve.tps / curve.positives
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    i = int(np.argmax(f1))
    return float(f1[i]), float(curve.thresholds[i])
