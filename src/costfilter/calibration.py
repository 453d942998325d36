"""Thresholds from normal images only: a held-out part of the normal training set."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``n`` normal images into (fit indices, calibration indices).

    With fewer than 2 images nothing is held out (thresholds then come from the fit images
    themselves and are optimistic; :func:`quantile_threshold` callers should warn).
    """
    if n < 2 or fraction <= 0:
        return np.arange(n), np.arange(0)
    order = np.random.default_rng(seed).permutation(n)
    n_cal = min(max(1, round(fraction * n)), n - 1)
    return np.sort(order[n_cal:]), np.sort(order[:n_cal])


def quantile_threshold(normal_scores: Sequence[float] | np.ndarray, false_alarm_rate: float) -> float:
    """Smallest observed-score threshold whose false-alarm rate on ``normal_scores`` is ≤ the target.

    Decisions are ``score > threshold``. With ``n`` scores the achievable rates are multiples of
    ``1/n``; the threshold is the ``ceil((1 − rate)·n)``-th smallest score.
    """
    s = np.sort(np.asarray(normal_scores, dtype=np.float64))
    if s.size == 0:
        raise ValueError("no normal scores to calibrate on")
    k = int(np.ceil((1.0 - false_alarm_rate) * s.size - 1e-9))
    return float(s[min(max(k, 1), s.size) - 1])
