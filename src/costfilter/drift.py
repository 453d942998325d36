"""Drift: is the line still sending what the model was calibrated on?

A :class:`DriftMonitor` keeps a rolling window of the last ``window`` images' scores,
typical-patch scores and decisions, and after each image compares them with the model's
calibration good images:

* the two-sample Kolmogorov–Smirnov statistic ``D`` of the image scores, and of the
  typical-patch scores (a lens, light or material change moves the whole map, not one patch);
* the population stability index (PSI) of the same, over ten bins cut at the calibration
  deciles;
* the share of images flagged (``review``, ``reject`` or ``unknown``) against what good images
  give (the calibration images' own flagged share).

Each limit is the null distribution's ``1 − α/k`` quantile for ``k`` statistics, so a
stationary stream of good parts crosses one in at most ``α`` of checks in expectation and one
check runs per image: ``α = 1e-4`` bounds false alarms at 1 per 10,000 images. KS uses the
asymptotic Kolmogorov distribution for two samples of sizes ``n`` (calibration) and ``m``
(window); PSI its χ² approximation ``PSI ≈ (1/n + 1/m)·χ²(bins − 1)``; the flagged share a
binomial tail above the calibration share's exact 95 % upper bound. ``benchmarks/drift.py``
measures both the false-alarm rate and how soon a shift is caught.

An alarm is raised when a statistic crosses its limit and is not raised again until it has
come back under it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: the statistics checked, in the order reported
STATISTICS = ("ks_score", "ks_typical", "psi_score", "psi_typical", "flagged")
BINS = 10
FLAGGED = ("review", "reject", "unknown")


@dataclass(frozen=True)
class DriftConfig:
    """Window length (images) and the false-alarm budget per check (all statistics together)."""

    window: int = 200
    alpha: float = 1e-4
    #: points kept per statistic for the page's charts (one per image, oldest dropped)
    history: int = 1000


@dataclass
class Alarm:
    """A statistic that crossed its limit: its value and limit, after how many images."""

    statistic: str
    value: float
    limit: float
    images: int
    window: int

    def text(self) -> str:
        what = {"ks_score": "image scores (KS)", "ks_typical": "typical-patch scores (KS)",
                "psi_score": "image scores (PSI)", "psi_typical": "typical-patch scores (PSI)",
                "flagged": "flagged share"}[self.statistic]
        return (f"drift: {what} {self.value:.3f} above its limit {self.limit:.3f} over the last "
                f"{self.window} images")


def ks_limit(n: int, m: int, alpha: float) -> float:
    """Two-sample KS critical value (asymptotic): ``c(α)·√((n + m)/(n·m))``, ``c(α) = √(−ln(α/2)/2)``."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def psi_limit(n: int, m: int, alpha: float, bins: int = BINS) -> float:
    """PSI's null quantile by its χ² approximation."""
    from scipy.stats import chi2

    return float(chi2.ppf(1 - alpha, bins - 1)) * (1 / n + 1 / m)


def ks_statistic(reference_sorted: np.ndarray, sample: np.ndarray) -> float:
    """``sup |F_ref − F_sample|`` (exact, over every jump of both step functions)."""
    s = np.sort(sample)
    grid = np.concatenate([reference_sorted, s])
    f_ref = np.searchsorted(reference_sorted, grid, side="right") / len(reference_sorted)
    f_s = np.searchsorted(s, grid, side="right") / len(s)
    return float(np.abs(f_ref - f_s).max())


def psi(edges: np.ndarray, expected: np.ndarray, sample: np.ndarray) -> float:
    """Population stability index of ``sample`` against bin shares ``expected``; empty bins
    count as half an image (the usual guard against ``log 0``)."""
    counts = np.bincount(np.searchsorted(edges, sample, side="right"), minlength=len(expected)).astype(float)
    actual = np.maximum(counts, 0.5) / len(sample)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


@dataclass
class _Reference:
    sorted: np.ndarray
    edges: np.ndarray
    shares: np.ndarray

    @classmethod
    def of(cls, values: list[float]) -> _Reference | None:
        v = np.sort(np.asarray(values, dtype=np.float64))
        v = v[np.isfinite(v)]
        if len(v) < 2:
            return None
        edges = np.unique(np.quantile(v, np.linspace(0, 1, BINS + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1).astype(float)
        return cls(v, edges, np.maximum(counts, 0.5) / len(v))


@dataclass
class DriftMonitor:
    """One station's (or the uploads') drift statistics; see the module docstring.

    ``scores`` / ``typical``: the calibration good images' image and typical-patch scores;
    ``flagged_share``: the share of them the model flags (``review`` or ``reject``)."""

    scores: list[float]
    typical: list[float]
    flagged_share: float
    config: DriftConfig = field(default_factory=DriftConfig)

    def __post_init__(self) -> None:
        from scipy.stats import beta, binom

        c = self.config
        self._score_ref = _Reference.of(self.scores)
        self._typical_ref = _Reference.of(self.typical)
        a = c.alpha / len(STATISTICS)
        n_s, n_t, m = len(self.scores), len(self.typical), c.window
        self.limits: dict[str, float | None] = {
            "ks_score": ks_limit(n_s, m, a) if self._score_ref else None,
            "ks_typical": ks_limit(n_t, m, a) if self._typical_ref else None,
            "psi_score": psi_limit(n_s, m, a) if self._score_ref else None,
            "psi_typical": psi_limit(n_t, m, a) if self._typical_ref else None,
        }
        k = round(self.flagged_share * n_s)
        upper = 1.0 if k >= n_s else float(beta.ppf(0.975, k + 1, n_s - k)) if n_s else 1.0
        self.limits["flagged"] = (float(binom.ppf(1 - a, m, upper)) + 1) / m if upper < 1 else None
        self._window: deque[tuple[float, float, bool]] = deque(maxlen=m)
        self.images = 0
        self.alarms = 0
        self.active: dict[str, bool] = dict.fromkeys(STATISTICS, False)
        self.values: dict[str, float | None] = dict.fromkeys(STATISTICS)
        self.history: deque[tuple[int, dict[str, float | None]]] = deque(maxlen=c.history)

    def observe(self, score: float, typical: float, decision: str) -> list[Alarm]:
        """Add one image; the alarms it raises (statistics that crossed their limit now)."""
        self.images += 1
        self._window.append((score, typical, decision in FLAGGED))
        if len(self._window) < self.config.window:
            return []
        w = np.asarray(self._window, dtype=np.float64)
        s, t, f = w[:, 0], w[:, 1], w[:, 2]
        s, t = s[np.isfinite(s)], t[np.isfinite(t)]
        v: dict[str, float | None] = dict.fromkeys(STATISTICS)
        if self._score_ref is not None and len(s):
            v["ks_score"] = ks_statistic(self._score_ref.sorted, s)
            v["psi_score"] = psi(self._score_ref.edges, self._score_ref.shares, s)
        if self._typical_ref is not None and len(t):
            v["ks_typical"] = ks_statistic(self._typical_ref.sorted, t)
            v["psi_typical"] = psi(self._typical_ref.edges, self._typical_ref.shares, t)
        v["flagged"] = float(f.mean())
        self.values = v
        self.history.append((self.images, v))
        raised = []
        for name in STATISTICS:
            value, limit = v[name], self.limits[name]
            over = value is not None and limit is not None and value >= limit
            if over and not self.active[name]:
                raised.append(Alarm(name, float(value), float(limit), self.images, self.config.window))  # type: ignore[arg-type]
            self.active[name] = over
        self.alarms += len(raised)
        return raised

    def state(self) -> dict[str, Any]:
        """Values, limits, which are in alarm, counts and the chart series (JSON-ready)."""
        return {"images": self.images, "window": self.config.window, "filled": len(self._window),
                "alpha": self.config.alpha, "alarms": self.alarms, "values": self.values, "limits": self.limits,
                "active": self.active, "calibration_images": len(self.scores),
                "series": {"n": [n for n, _ in self.history],
                           **{k: [x[k] for _, x in self.history] for k in STATISTICS}},
                "config": asdict(self.config)}
