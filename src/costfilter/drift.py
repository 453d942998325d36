"""Drift: is the line still sending what it sent when this model version started?

A :class:`DriftMonitor` keeps, per station, the first ``baseline`` images a model version
inspects as its reference, and a rolling window of the last ``window`` images after them. After
each image it compares the window with the baseline:

* the two-sample Kolmogorov–Smirnov statistic ``D`` of the image scores, and of the
  typical-patch scores (a light, lens or material change moves the whole map, not one patch);
* the population stability index (PSI) of the same, over ten bins cut at the baseline's deciles;

and the window's share of flagged images (``review``, ``reject`` or ``unknown``) with the share
the model flags among its calibration good images. Once, when the baseline is complete, the
baseline itself is compared with the calibration images (KS of both scores): a line that differed
from them from the start is reported then.

Why a baseline and not the calibration images throughout: the calibration scores are the fit
images scored leave-one-out, and on real data new good parts differ from them by more than
sampling noise (magnetic_tile: KS 0.14 between its test good images and the leave-one-out
scores, p = 0.0005), enough for an α = 1e-4 test against them to alarm about 120 times per
10,000 good parts (``benchmarks/drift.py``). A drift alarm should mean the line changed, so the window
is compared with what the line sent at the start.

Each limit is the null distribution's ``1 − α/k`` quantile for the ``k`` statistics checked per
image, so a stationary line crosses one in at most ``α`` of checks in expectation and one check
runs per image: ``α = 1e-4`` bounds false alarms at 1 per 10,000 images. KS uses the asymptotic
Kolmogorov distribution for two samples of sizes ``n`` and ``m``; PSI a seeded simulation of
its null (:func:`psi_limit`, distribution-free because the bins are cut at the baseline's
quantiles); the flagged share a binomial tail above the calibration share's exact 95 % upper
bound. An alarm is raised when a statistic crosses its limit and not
again until it has come back under it.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: the statistics checked after each image, in the order reported
STATISTICS = ("ks_score", "ks_typical", "psi_score", "psi_typical", "flagged")
#: checked once, when the baseline is complete: the baseline against the calibration images
BASELINE_STATISTICS = ("baseline_ks_score", "baseline_ks_typical")
BINS = 10
FLAGGED = ("review", "reject", "unknown")
WHAT = {"ks_score": "image scores (KS)", "ks_typical": "typical-patch scores (KS)",
        "psi_score": "image scores (PSI)", "psi_typical": "typical-patch scores (PSI)", "flagged": "flagged share",
        "baseline_ks_score": "the first images' scores against the calibration images (KS)",
        "baseline_ks_typical": "the first images' typical-patch scores against the calibration images (KS)"}


@dataclass(frozen=True)
class DriftConfig:
    """Baseline and window lengths (images), and the false-alarm budget per check."""

    window: int = 200  # the last images, compared with the baseline after each one
    baseline: int = 500  # the first images a model version inspects: the reference
    alpha: float = 1e-4  # false-alarm budget per check, shared by the statistics
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
        if self.statistic.startswith("baseline"):
            return (f"drift: {WHAT[self.statistic]} {self.value:.3f} above its limit {self.limit:.3f} "
                    f"({self.window} images)")
        return (f"drift: {WHAT[self.statistic]} {self.value:.3f} above its limit {self.limit:.3f} over the last "
                f"{self.window} images")


def ks_limit(n: int, m: int, alpha: float) -> float:
    """Two-sample KS critical value (asymptotic): ``c(α)·√((n + m)/(n·m))``, ``c(α) = √(−ln(α/2)/2)``."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


@functools.lru_cache(maxsize=64)
def psi_limit(counts: tuple[int, ...], m: int, alpha: float, seed: int = 0) -> float:
    """PSI's null ``1 − alpha`` quantile for a window of ``m`` against a reference whose bins
    (cut at its own quantiles) hold ``counts`` of its values, by seeded simulation: with the bins
    cut at the reference's order statistics, the true probability of each bin is a uniform
    spacing, Dirichlet(``counts``), whatever the scores' distribution; the window's counts are
    then multinomial. (The χ² approximation ``(1/n + 1/m)·χ²(bins − 1)`` is too light in the tail
    this far out: it alarmed on a seeded stationary stream.)"""
    rng = np.random.default_rng(seed)
    n_sims = int(min(1_000_000, max(200_000, 20 / alpha)))
    expected = np.maximum(np.asarray(counts, dtype=np.float64), 0.5) / sum(counts)
    out = np.empty(n_sims)
    for i in range(0, n_sims, 250_000):
        k = min(250_000, n_sims - i)
        p = rng.dirichlet(np.maximum(counts, 1), size=k)
        actual = np.maximum(rng.multinomial(m, p), 0.5) / m
        out[i : i + k] = np.sum((actual - expected) * np.log(actual / expected), axis=1)
    return float(np.quantile(out, 1 - alpha))


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
    counts: tuple[int, ...]

    @property
    def shares(self) -> np.ndarray:
        return np.maximum(np.asarray(self.counts, dtype=np.float64), 0.5) / len(self.sorted)

    @classmethod
    def of(cls, values: Any) -> _Reference | None:
        v = np.sort(np.asarray(values, dtype=np.float64))
        v = v[np.isfinite(v)]
        if len(v) < 2:
            return None
        edges = np.unique(np.quantile(v, np.linspace(0, 1, BINS + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1)
        return cls(v, edges, tuple(int(c) for c in counts))


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
        self._a = c.alpha / len(STATISTICS)
        n, m = len(self.scores), c.window
        k = round(self.flagged_share * n)
        upper = 1.0 if k >= n else float(beta.ppf(0.975, k + 1, n - k)) if n else 1.0
        #: limits of the window checks: KS and PSI are set once the baseline is complete
        self.limits: dict[str, float | None] = dict.fromkeys(STATISTICS)
        self.limits["flagged"] = (float(binom.ppf(1 - self._a, m, upper)) + 1) / m if upper < 1 else None
        self._baseline: list[tuple[float, float]] = []
        self._refs: tuple[_Reference | None, _Reference | None] = (None, None)
        self._window: deque[tuple[float, float, bool]] = deque(maxlen=m)
        self.images = 0
        self.alarms = 0
        self.active: dict[str, bool] = dict.fromkeys(STATISTICS + BASELINE_STATISTICS, False)
        self.values: dict[str, float | None] = dict.fromkeys(STATISTICS + BASELINE_STATISTICS)
        self.history: deque[tuple[int, dict[str, float | None]]] = deque(maxlen=c.history)

    @property
    def baseline_complete(self) -> bool:
        return len(self._baseline) >= self.config.baseline

    def _complete_baseline(self) -> list[Alarm]:
        base = np.asarray(self._baseline)
        self._refs = (_Reference.of(base[:, 0]), _Reference.of(base[:, 1]))
        n, m, a = len(base), self.config.window, self._a
        for key, ref in (("score", self._refs[0]), ("typical", self._refs[1])):
            self.limits[f"ks_{key}"] = ks_limit(n, m, a) if ref else None
            self.limits[f"psi_{key}"] = psi_limit(ref.counts, m, a) if ref else None
        raised = []
        for key, cal, col in (("baseline_ks_score", self.scores, 0), ("baseline_ks_typical", self.typical, 1)):
            ref = _Reference.of(cal)
            if ref is None:
                continue
            value = ks_statistic(ref.sorted, base[:, col])
            limit = ks_limit(len(ref.sorted), n, a)
            self.values[key] = value
            self.limits[key] = limit
            if value >= limit:
                self.active[key] = True
                raised.append(Alarm(key, value, limit, self.images, n))
        return raised

    def observe(self, score: float, typical: float, decision: str) -> list[Alarm]:
        """Add one image; the alarms it raises (statistics that crossed their limit now)."""
        self.images += 1
        raised: list[Alarm] = []
        if not self.baseline_complete:
            if math.isfinite(score) and math.isfinite(typical):
                self._baseline.append((score, typical))
            if self.baseline_complete:
                raised += self._complete_baseline()
        self._window.append((score, typical, decision in FLAGGED))
        if len(self._window) < self.config.window:
            return self._count(raised)
        w = np.asarray(self._window, dtype=np.float64)
        s, t = w[:, 0][np.isfinite(w[:, 0])], w[:, 1][np.isfinite(w[:, 1])]
        v: dict[str, float | None] = dict.fromkeys(STATISTICS)
        for key, ref, x in (("score", self._refs[0], s), ("typical", self._refs[1], t)):
            if ref is not None and len(x):
                v[f"ks_{key}"] = ks_statistic(ref.sorted, x)
                v[f"psi_{key}"] = psi(ref.edges, ref.shares, x)
        v["flagged"] = float(w[:, 2].mean())
        self.values.update(v)
        self.history.append((self.images, v))
        for name in STATISTICS:
            value, limit = v[name], self.limits[name]
            over = value is not None and limit is not None and value >= limit
            if over and not self.active[name]:
                assert value is not None and limit is not None
                raised.append(Alarm(name, float(value), float(limit), self.images, self.config.window))
            self.active[name] = over
        return self._count(raised)

    def _count(self, raised: list[Alarm]) -> list[Alarm]:
        self.alarms += len(raised)
        return raised

    def state(self) -> dict[str, Any]:
        """Values, limits, which are in alarm, counts and the chart series (JSON-ready)."""
        return {"images": self.images, "window": self.config.window, "filled": len(self._window),
                "baseline": len(self._baseline), "baseline_needed": self.config.baseline,
                "alpha": self.config.alpha, "alarms": self.alarms, "values": self.values, "limits": self.limits,
                "active": self.active, "calibration_images": len(self.scores),
                "series": {"n": [n for n, _ in self.history],
                           **{k: [x[k] for _, x in self.history] for k in STATISTICS}},
                "config": asdict(self.config)}
