"""Thresholds from normal images only (a held-out part of the normal training set), operating
points with exact binomial intervals, and bootstrap intervals for metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial confidence interval for a rate observed as ``k`` events in ``n`` trials."""
    from scipy.stats import beta

    if n <= 0:
        return 0.0, 1.0
    a = (1.0 - confidence) / 2.0
    low = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1.0 - a, k + 1, n - k))
    return low, high


@dataclass
class OperatingPoint:
    """An image threshold chosen for a target false-reject rate on held-out good images."""

    name: str
    target_false_reject: float
    threshold: float
    #: false-reject rate this threshold gives on the held-out good images, and its 95 % interval
    false_reject: float
    ci_low: float
    ci_high: float
    n_good: int
    warning: str | None = None


#: Named points saved in every model: a strict line rejects more (higher false-reject rate).
NAMED_POINTS = {"strict": 0.05, "balanced": 0.01, "lenient": 0.001}


def support_warning(n: int, target: float) -> str | None:
    """A warning when ``n`` good images cannot show a rate as low as ``target``.

    With zero false rejects in ``n`` images the exact two-sided 95 % upper bound is
    ``1 − 0.025^(1/n)`` (≈ 3.7/n); a target below that cannot be confirmed by these images.
    """
    upper = clopper_pearson(0, n)[1] if n else 1.0
    if upper > target:
        need = int(np.ceil(np.log(0.025) / np.log1p(-target)))  # smallest n whose bound reaches target
        return (f"{n} held-out good images cannot confirm a false-reject rate of {target:g} "
                f"(95 % bound with no rejects is {upper:.3g}); about {need} are needed")
    return None


def operating_point(good_scores: Sequence[float] | np.ndarray, target: float, name: str = "custom") -> OperatingPoint:
    """Threshold for ``target`` on ``good_scores``, its achieved rate, interval and support warning."""
    s = np.asarray(good_scores, dtype=np.float64)
    t = quantile_threshold(s, target)
    k = int((s > t).sum())
    low, high = clopper_pearson(k, s.size)
    return OperatingPoint(name, target, t, k / s.size, low, high, int(s.size), support_warning(int(s.size), target))


def bootstrap_interval(scores: Sequence[float], labels: Sequence[int], metric: Callable[[np.ndarray, np.ndarray], float],
                       n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Seeded percentile bootstrap interval of ``metric(scores, labels)``, resampling normal and
    anomalous images separately so every resample has both classes."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if not len(pos) or not len(neg):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        vals[b] = metric(s[idx], y[idx])
    a = (1.0 - confidence) / 2.0
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1.0 - a))
