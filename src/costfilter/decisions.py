"""Decisions, in one place for every runtime: thresholds from normal images only (fit images
scored leave-one-out, or a held-out part of the normal training set), operating points with exact
binomial intervals, per-category thresholds of a model that learned several, and a map + score
turned into a decided :class:`~costfilter.results.Prediction`. Also bootstrap intervals for metrics."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import CalibrationConfig
from .errors import CostfilterError
from .results import Prediction


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
    """An image threshold chosen for a target false-reject rate on calibration good images."""

    name: str
    target_false_reject: float
    threshold: float
    #: false-reject rate this threshold gives on the calibration good images, and its 95 % interval
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
        return (f"{n} calibration good images cannot confirm a false-reject rate of {target:g} "
                f"(95 % bound with no rejects is {upper:.3g}); about {need} are needed")
    return None


@dataclass
class PointOnTest:
    """An operating point applied to a labelled test split, as a line would use it: the share of
    the good images it rejects and of the defective ones it catches (``score > threshold``), each
    with its exact 95 % interval (NaN where the split has no such images)."""

    name: str
    target_false_reject: float
    threshold: float
    false_reject: float
    false_reject_ci: tuple[float, float]
    n_good: int
    recall: float
    recall_ci: tuple[float, float]
    n_defective: int


def points_on_test(points: Sequence[OperatingPoint], scores: Sequence[float] | np.ndarray,
                   labels: Sequence[int] | np.ndarray) -> list[PointOnTest]:
    """Each of ``points`` on test ``scores`` with 0/1 ``labels`` (1: defective)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    good, bad = s[y == 0], s[y == 1]

    def rate(x: np.ndarray, t: float) -> tuple[float, tuple[float, float]]:
        k = int((x > t).sum())
        return (k / x.size if x.size else math.nan), clopper_pearson(k, x.size)

    out = []
    for p in points:
        fr, fr_ci = rate(good, p.threshold)
        rec, rec_ci = rate(bad, p.threshold)
        out.append(PointOnTest(p.name, p.target_false_reject, p.threshold, fr, fr_ci, int(good.size), rec, rec_ci,
                               int(bad.size)))
    return out


def operating_point(good_scores: Sequence[float] | np.ndarray, target: float, name: str = "custom") -> OperatingPoint:
    """Threshold for ``target`` on ``good_scores``, its achieved rate, interval and support warning."""
    s = np.asarray(good_scores, dtype=np.float64)
    t = quantile_threshold(s, target)
    k = int((s > t).sum())
    low, high = clopper_pearson(k, s.size)
    return OperatingPoint(name, target, t, k / s.size, low, high, int(s.size), support_warning(int(s.size), target))


def bootstrap_intervals(scores: Sequence[float], labels: Sequence[int],
                        metrics: Callable[[np.ndarray, np.ndarray], Sequence[float]], names: Sequence[str],
                        n_boot: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict[str, tuple[float, float]]:
    """Seeded percentile bootstrap intervals of metrics of ``(scores, labels)``, resampling normal
    and anomalous images separately so every resample has both classes. ``metrics`` returns one
    value per name, in order, so work they share is done once per resample; each metric's
    interval is the one it would get alone (the resamples depend on the seed only)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if not len(pos) or not len(neg):
        return {name: (float("nan"), float("nan")) for name in names}
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        vals.append(metrics(s[idx], y[idx]))
    table = np.asarray(vals, dtype=np.float64).reshape(n_boot, len(names))
    a = (1.0 - confidence) / 2.0
    return {name: (float(np.quantile(col, a)), float(np.quantile(col, 1.0 - a))) for name, col in zip(names, table.T)}


@dataclass
class Thresholds:
    """Decision thresholds calibrated on normal images only (never on test labels)."""

    #: image score above which a part is rejected
    image: float
    #: map value above which a pixel belongs to a defect region
    pixel: float
    n_calibration: int
    #: false-reject rate the image threshold gives on the calibration images themselves
    image_false_reject: float
    #: whether the calibration scores are honest: images held out of the bank, or fit images
    #: scored without their own bank rows (False: fit images scored as they are, too few images)
    held_out: bool = True
    #: lower edge of the review band (``review`` between this and ``image``), if a band is set
    review: float | None = None
    #: typical-patch score (median of the map) above which an input is ``unknown`` (None: off)
    ood_limit: float | None = None
    #: where the calibration scores came from: ``holdout`` (images kept out of the bank),
    #: ``leave-one-out`` (every fit image, scored against the bank without its own rows),
    #: ``fit`` (fit images as they are: optimistic) or ``new`` (good images given to ``calibrate``)
    source: str = "holdout"

    def __post_init__(self) -> None:
        # A NaN threshold compares False with every score, so every part would pass: refused
        # wherever thresholds are made or read (fit, calibrate, checkpoints, ONNX metadata).
        for name in ("image", "pixel", "review", "ood_limit", "image_false_reject"):
            value = getattr(self, name)
            if value is None and name in ("review", "ood_limit"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CostfilterError(f"{name} threshold {value!r} is not a finite number")
        if isinstance(self.n_calibration, bool) or not isinstance(self.n_calibration, int) or self.n_calibration < 0:
            raise CostfilterError(f"n_calibration {self.n_calibration!r} is not a count")
        if self.review is not None and not self.review <= self.image:
            raise CostfilterError(f"review threshold {self.review} is above the reject threshold {self.image}")

    def decide(self, score: float, typical: float = 0.0) -> str:
        """``unknown`` / ``reject`` / ``review`` / ``pass`` for one image (``typical``: its
        typical-patch score, the median of its map). A score that is not a finite number (a
        corrupt model or input) is ``unknown``, never ``pass``."""
        if not (math.isfinite(score) and math.isfinite(typical)):
            return "unknown"
        if self.ood_limit is not None and typical > self.ood_limit:
            return "unknown"
        if score > self.image:
            return "reject"
        if self.review is not None and score > self.review:
            return "review"
        return "pass"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Thresholds:
        """From a saved dict; files written before the rename say ``image_false_alarm``."""
        if not isinstance(data, dict):
            raise CostfilterError(f"thresholds are not a mapping: {data!r:.60}")
        data = dict(data)
        if "image_false_alarm" in data:
            data["image_false_reject"] = data.pop("image_false_alarm")
        return cls(**data)


def thresholds_from_scores(scores: Sequence[float], peaks: Sequence[float], typical: Sequence[float],
                           config: CalibrationConfig, source: str) -> tuple[Thresholds, list[OperatingPoint]]:
    """Every threshold from good images alone: ``scores`` set the image threshold
    (``false_reject_rate``) and review band, map ``peaks`` the pixel threshold, ``typical``-patch
    scores the out-of-distribution limit; plus the named operating points."""
    honest = source != "fit"
    point = operating_point(scores, config.false_reject_rate, "chosen")
    review = (operating_point(scores, config.review_false_reject_rate).threshold
              if config.review_false_reject_rate else None)
    thresholds = Thresholds(
        image=point.threshold,
        pixel=quantile_threshold(peaks, config.pixel_false_alarm_rate),
        n_calibration=len(scores),
        image_false_reject=point.false_reject,
        held_out=honest,
        review=review,
        ood_limit=config.ood_factor * max(typical) if config.ood_factor > 0 and honest else None,
        source=source,
    )
    return thresholds, [point] + [operating_point(scores, r, name) for name, r in NAMED_POINTS.items()]


def score_shift(previous: Sequence[float], new: Sequence[float]) -> dict[str, float]:
    """How far good-image scores moved between two calibrations: medians and a KS test."""
    from scipy.stats import ks_2samp

    ks = ks_2samp(previous, new)
    return {"previous_median": float(np.median(previous)), "new_median": float(np.median(new)),
            "median_shift": float(np.median(new) - np.median(previous)),
            "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue)}


# ------------------------------------------------------------------ per-category thresholds
# A model that learned categories one after another (``fit --continue``) keeps one set of
# thresholds per category; an image is decided with the set of the category it was routed to.
# ``owner`` below is a fitted detector: its ``thresholds`` and ``state`` (DetectorState).


def category_index(names: Sequence[str], category: str | None) -> int | None:
    """Index of learned ``category`` among ``names`` (None for a model of one category, which
    takes no category name); a name it did not learn is a one-line error."""
    if not names:
        if category is not None:
            raise CostfilterError(f"this model has no learned categories; got category {category!r}")
        return None
    if category not in names:
        raise CostfilterError(f"this model learned categories {', '.join(names)}: name one of them (got {category!r})")
    return list(names).index(category)


def thresholds_for(owner: Any, category: str | None) -> Thresholds:
    """The thresholds an image scored as learned ``category`` is decided with (None, or a model
    of one category: the model's own)."""
    learned = owner.state.learned
    index = category_index([c.name for c in learned], category) if category is not None and learned else None
    if owner.thresholds is None:
        raise CostfilterError("the detector is not fitted: call fit() or load a checkpoint")
    return owner.thresholds if index is None else learned[index].thresholds


def set_thresholds(owner: Any, index: int | None, scores: list[float], peaks: list[float], typical: list[float],
                   config: CalibrationConfig, source: str) -> dict[str, float]:
    """Set the model's thresholds (``index`` None) or learned category ``index``'s from good
    images' scores, map peaks and typical-patch scores; returns how far the scores moved from
    the previous calibration (empty if there was none)."""
    thresholds, points = thresholds_from_scores(scores, peaks, typical, config, source)
    if index is None:
        previous = owner.state.calibration_scores
    else:
        learned = owner.state.learned[index]
        previous = learned.calibration_scores
        learned.thresholds, learned.operating_points = thresholds, points
        learned.calibration_scores, learned.n_calibration_images = scores, len(scores)
    if index in (None, 0):  # the first category's thresholds stand for the model where one set is shown
        owner.thresholds, owner.state.operating_points = thresholds, points
        owner.state.calibration_scores = scores
        owner.state.calibration_peaks, owner.state.calibration_typical = list(peaks), list(typical)
    return score_shift(previous, scores) if previous else {}


def chosen_point(t: Thresholds, good: Sequence[float], false_reject: float | None = None,
                 threshold: float | None = None) -> tuple[Thresholds, OperatingPoint]:
    """``t`` with its image threshold set by a target false-reject rate on the good scores
    ``good``, or as a fixed value; and that point with its achieved rate and interval."""
    if threshold is not None:
        k = int(np.sum(np.asarray(good) > threshold))
        lo, hi = clopper_pearson(k, len(good))
        point = OperatingPoint("fixed", float("nan"), float(threshold), k / max(len(good), 1), lo, hi, len(good))
    elif false_reject is not None:
        if not 0 < false_reject < 1:
            raise CostfilterError(f"false-reject rate must be in (0, 1), got {false_reject}")
        point = operating_point(good, false_reject, "chosen")
    else:
        raise CostfilterError("give a target false-reject rate or a fixed threshold")
    if t.review is not None and t.review >= point.threshold:
        raise CostfilterError(f"review threshold {t.review:.4f} must stay below the reject threshold {point.threshold:.4f}")
    # A new Thresholds checks itself (a NaN or infinite threshold is refused).
    return dataclasses.replace(t, image=point.threshold, image_false_reject=point.false_reject), point


# ------------------------------------------------------------------ map + score → Prediction
def decided_prediction(name: str, size: Sequence[int], amap: Any, score: float, t: Thresholds,
                       **extra: object) -> Prediction:
    """One image's ``(S, S)`` (or source-size) map (a tensor) and score, decided with thresholds
    ``t`` (its typical patch, the map's median, decides ``unknown``). Every runtime (eager, ONNX,
    Ray, the service) decides through here."""
    from .maps import typical_patch_score

    typical = float(typical_patch_score(amap[None]))
    return Prediction(name, float(score), t.decide(score, typical), amap.numpy().astype(np.float32, copy=False),
                      (int(size[0]), int(size[1])), typical, **extra)  # type: ignore[arg-type]


def decided_batch(owner: Any, names: Sequence[str], sizes: Sequence[Sequence[int]], maps: Sequence[Any],
                  scores: Sequence[float], categories: Sequence[int]) -> list[Prediction]:
    """A scored batch decided: with the thresholds of the learned category each image was routed
    to (``categories``, indices), or the model's own."""
    learned = owner.state.learned
    out = []
    for name, size, m, s, c in zip(names, sizes, maps, scores, categories):
        t = learned[c].thresholds if learned else owner.thresholds
        out.append(decided_prediction(name, size, m, s, t, pixel_threshold=t.pixel if learned else None,
                                      category=learned[c].name if learned else None))
    return out


def outlier_predictions(names: Sequence[str], sizes: Sequence[Sequence[int]], maps: Sequence[Any],
                        scores: Sequence[float], threshold: float) -> list[Prediction]:
    """Zero-shot decisions: an image is rejected when its score stands out from its batch (above
    ``threshold``, the batch's robust outlier limit), which is also its pixel threshold."""
    return [Prediction(name, float(s), "reject" if s > threshold else "pass",
                       m.numpy().astype(np.float32, copy=False), (int(size[0]), int(size[1])),
                       pixel_threshold=threshold) for name, size, m, s in zip(names, sizes, maps, scores)]
