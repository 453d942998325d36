"""The public API: ``Detector(config).fit(data)``, ``.predict(images)``, ``.evaluate(data)``,
``.calibrate(good)``, ``.save(path)``, ``Detector.load(path)``.

A façade over the pipeline: the input pipeline (:mod:`.inputs`) feeds the registered method's
model and fit step (:mod:`.methods`); thresholds come from :mod:`.calibration`, results are
:mod:`.results` types, metrics come from :mod:`.evaluation`. The CLI, the service, export and the
benchmarks call only this.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from .atomic import check_writable
from .calibration import (
    OperatingPoint,
    Thresholds,
    clopper_pearson,
    holdout_split,
    operating_point,
    score_shift,
    thresholds_from_scores,
)
from .checkpoint import load_checkpoint, save_checkpoint, signature_status
from .config import DetectorConfig
from .data import Sample, categories_of, load_dataset, split_of
from .data.imageio import as_rgb, read_image
from .errors import CheckpointError, CostfilterError, DataError
from .evaluation import ScoredBatch, evaluate
from .inputs import Inputs
from .integrity import check_weights_file, signing_key
from .methods import get_method
from .methods.base import FitJob, FitResult
from .provenance import environment, file_sha256, inputs_digest
from .results import Evaluation, Prediction
from .scoring import typical_patch_score
from .screening import FlaggedImage, Screening, distinct_hashes, screen
from .state import DetectorState, LearnedCategory
from .tiling import score_tiled

ImageInput = str | Path | np.ndarray


def _resolve_data(data: Sequence[Sample] | str | Path, fmt: str, categories: Sequence[str] | None) -> list[Sample]:
    if isinstance(data, (str, Path)):
        return load_dataset(data, fmt, categories)
    return list(data)


class Detector:
    """An anomaly detector: fit on normal images, then score and localise.

    Example:
        >>> det = Detector().fit("mvtec_root/bottle")          # doctest: +SKIP
        >>> det.predict("part.png")[0].decision               # doctest: +SKIP
        'pass'
    """

    def __init__(self, config: DetectorConfig | None = None, *, progress: bool = True):
        self.config = config or DetectorConfig()
        self.config.validate()
        self.method = get_method(self.config.method)
        self.progress = progress
        torch.manual_seed(self.config.seed)
        self.model = self.method.build(self.config).eval()
        self.thresholds: Thresholds | None = None
        self.state = DetectorState()

    @property
    def inputs(self) -> Inputs:
        """The input pipeline for this detector's config."""
        return Inputs(self.config, self.progress, reference_sets=self.zero_shot)

    @property
    def zero_shot(self) -> bool:
        """True for methods that score a batch against itself and need no fit."""
        return not self.method.needs_fit

    @property
    def seed(self) -> int:
        return self.config.seed

    # ------------------------------------------------------------------ fitting
    def fit(self, data: Sequence[Sample] | str | Path, fmt: str = "mvtec",
            categories: Sequence[str] | None = None, *, resume: Path | None = None,
            observer: Callable[[int, torch.nn.Module], None] | None = None) -> Detector:
        """Fit on the normal ``train`` images of ``data`` (samples, or a dataset root in ``fmt``).

        The memory bank takes every image and calibrates its thresholds on each of them scored
        leave-one-out; trained methods (and ``calibration.holdout_fraction`` > 0) hold a seeded
        fraction out of the bank and of training, to calibrate and to validate on. ``resume``
        (trained methods): a file where the training state is kept, so an interrupted fit picks
        up where it stopped; ``observer(step, model)`` is called after each of its validations.
        """
        if self.method.fit is None:
            raise CostfilterError(f"method {self.config.method!r} needs no fit: run predict or test directly")
        train = [s for s in split_of(_resolve_data(data, fmt, categories), "train") if s.label == 0]
        if not train:
            raise CostfilterError("no normal training images to fit on")
        hashes, all_train = distinct_hashes(train), train
        t0 = time.perf_counter()
        job, cal_paths = self._fit_job(train, resume=resume, observer=observer)
        found = None
        if not job.leave_one_out:  # trained methods, strict holdouts: a memory-bank pass scores the fit images
            found = self._screen_by_memory(train)
            train = _without(train, found.removed)
            job, cal_paths = self._fit_job(train, resume=resume, observer=observer)
        result = self.method.fit(job)
        if job.leave_one_out and result.calibration is not None:
            sc = self.config.screening
            found = screen([str(x.path) for x in job.samples], result.calibration[0], sc.contamination, sc.outlier_k)
            if found.removed:  # fit again without them: the bank and every threshold change
                train = _without(train, found.removed)
                torch.manual_seed(self.config.seed)
                self.model = self.method.build(self.config).eval()
                job, cal_paths = self._fit_job(train)
                result = self.method.fit(job)
            owners = {str(x.path): i for i, x in enumerate(job.samples)}
            for f in found.flagged:
                f.owner = owners.get(f.path)
        self.config = result.config or job.config
        timings = job.timings
        self._calibrate_fit(result, job, cal_paths)
        timings["fit_total_s"] = time.perf_counter() - t0
        s = self.state
        s.categories, s.class_names = categories_of(train), result.state.get("class_names", [])
        s.n_train_images, s.n_bank_images = len(train), len(job.samples)
        s.n_calibration_images = len(cal_paths) or len(job.samples)
        s.bank_size, s.timings, s.training = result.bank_size, timings, result.training
        s.reconstruction_loss = result.state.get("reconstruction_loss", [])
        s.created = datetime.now(UTC).isoformat(timespec="seconds")
        s.training_hashes = [h[:16] for h in hashes]  # every image given, removed ones too: all were seen
        kept = {str(x.path) for x in train}
        s.training_data = inputs_digest([x.path for x in train],
                                        [h for x, h in zip(all_train, hashes) if str(x.path) in kept])
        s.screening = found.to_dict() if found is not None else None
        s.weights_sha256 = file_sha256(self.config.features.weights) if self.config.features.weights else None
        s.environment = {"versions": environment()["versions"], "cpu_count": os.cpu_count()}
        return self

    def _screen_by_memory(self, train: list[Sample]) -> Screening:
        """Screen ``train`` with the leave-one-out scores of a memory bank on the same features
        (for methods that do not score their fit images leave-one-out themselves)."""
        cfg = DetectorConfig(method="memory", features=dataclasses.replace(self.config.features),
                             memory=dataclasses.replace(self.config.memory),
                             scoring=dataclasses.replace(self.config.scoring),
                             tiling=dataclasses.replace(self.config.tiling), seed=self.config.seed,
                             batch_size=self.config.batch_size)
        cfg.calibration.holdout_fraction = 0.0
        probe = Detector(cfg, progress=self.progress).fit(train)
        sc = self.config.screening
        return screen([str(x.path) for x in train], probe.state.calibration_scores, sc.contamination, sc.outlier_k,
                      scores_from="a memory bank on the same features, leave-one-out")

    def flagged_predictions(self) -> list[Prediction]:
        """The flagged training images scored by this model, each without its own bank rows where
        it is in a memory bank (so its defect shows as a new part's would)."""
        flagged = [FlaggedImage(**f) for f in (self.state.screening or {}).get("flagged", [])]
        if not flagged or self.inputs.tiled:
            return [p for f in flagged for p in self.predict([Path(f.path)])] if flagged else []
        owner_of = {f.path: f.owner for f in flagged}
        t = self.require_fitted()
        out = []
        for batch in self.inputs.batches([Path(f.path) for f in flagged], "draw flagged"):
            owners = [owner_of[str(p)] for p in batch.paths]
            exclude = torch.tensor([-1 if o is None else o for o in owners])
            args = (exclude,) if any(o is not None for o in owners) else ()  # only a memory bank knows owners
            with torch.inference_mode():
                maps, scores = self.model(batch.images, *args)
            for p, size, m, sc in zip(batch.paths, batch.sizes, maps, scores.tolist()):
                out.append(decided_prediction(str(p), size, m, sc, t))
        return out

    def extend(self, data: Sequence[Sample] | str | Path, fmt: str = "mvtec", categories: Sequence[str] | None = None,
               *, name: str | None = None) -> Detector:
        """Continual learning: add the normal ``train`` images of ``data`` to this fitted model as
        a new category, named ``name`` (default: its category names joined by ``+``).

        Earlier categories keep their bank rows and thresholds; each image is then scored as
        the category whose normal patches it is nearest to (see
        :class:`~costfilter.bases.routing.CategoryRouter`) and decided with that category's
        thresholds. The memory bank appends the new category's coreset, so earlier categories'
        scores do not change; DFM fine-tunes its adapter on the new images, replaying the
        stored images of earlier categories (``dfm.replay_share``). A model fitted once becomes
        the first category.
        """
        t = self.require_fitted()
        if self.method.extend is None:
            raise CostfilterError(f"method {self.config.method!r} cannot add a category to a fitted model; "
                                  "fit all categories together")
        if self.inputs.tiled:
            raise CostfilterError("a tiled model cannot add a category yet; fit all categories together")
        train = [s for s in split_of(_resolve_data(data, fmt, categories), "train") if s.label == 0]
        if not train:
            raise CostfilterError("no normal training images to add")
        hashes = distinct_hashes(train)
        new_categories = categories_of(train)
        name = name or "+".join(new_categories)
        st = self.state
        first = "+".join(st.categories) or "category 1"
        if name in (self.learned or [first]):
            raise CostfilterError(f"the model already learned a category named {name!r}: pass another name")
        if not st.learned:  # the model as fitted so far becomes the first learned category
            st.learned = [LearnedCategory(first, t, st.n_train_images, st.n_calibration_images, st.bank_size or 0,
                                          st.calibration_scores, st.operating_points, st.training_data, st.created,
                                          st.training)]
        job, cal_paths = self._fit_job(train)
        t0 = time.perf_counter()
        result = self.method.extend(job)
        st.training_hashes = st.training_hashes + [h[:16] for h in hashes]
        st.learned.append(LearnedCategory(name, t, len(train), 0, result.bank_size or 0,
                                          training_data=inputs_digest([x.path for x in train], hashes),
                                          created=datetime.now(UTC).isoformat(timespec="seconds"),
                                          training=result.training))
        self._calibrate_fit(result, job, cal_paths, category=name)
        job.timings["fit_total_s"] = time.perf_counter() - t0
        st.categories = st.categories + [c for c in new_categories if c not in st.categories]
        st.n_train_images += len(train)
        st.bank_size = (st.bank_size or 0) + (result.bank_size or 0)
        st.timings.update({f"continue_{k}": v for k, v in job.timings.items()})  # the latest addition's
        return self

    def _fit_job(self, train: list[Sample], resume: Path | None = None,
                 observer: Callable[[int, torch.nn.Module], None] | None = None) -> tuple[FitJob, list[Path]]:
        """The fit step's job for normal ``train`` samples (a seeded part held out where the
        method or config asks), and the held-out paths (empty: leave-one-out, or fit images)."""
        cfg = self.config
        holdout = cfg.calibration.holdout_fraction
        fit_idx, cal_idx = holdout_split(len(train), self.method.default_holdout if holdout is None else holdout, cfg.seed)
        fit_samples = [train[i] for i in fit_idx]
        fit_paths = [s.path for s in fit_samples]
        cal_paths = [train[i].path for i in cal_idx]
        loo = not cal_paths and not self.method.trains and len(fit_samples) >= 2
        job = FitJob(self.model, cfg, fit_samples, cal_paths or ([] if loo else fit_paths), self.inputs,
                     leave_one_out=loo, resume=resume, observer=observer)
        return job, cal_paths

    def _calibrate_fit(self, result: FitResult, job: FitJob, cal_paths: list[Path], category: str | None = None) -> None:
        """Thresholds after a fit step: from its leave-one-out scores, else from the held-out
        images (or the fit images themselves when none were held out)."""
        if result.calibration is not None:
            self._apply_calibration(self._category_index(category), *result.calibration, source="leave-one-out")
            return
        t0 = time.perf_counter()
        self.calibrate(cal_paths or [s.path for s in job.samples], source="holdout" if cal_paths else "fit",
                       desc="calibrate" if cal_paths else "calibrate on fit images", category=category)
        job.timings["calibration_s"] = time.perf_counter() - t0

    def calibrate(self, good: Sequence[Path | str], *, source: str = "new", desc: str = "calibrate",
                  category: str | None = None) -> dict[str, float]:
        """Set every threshold from good images alone: image (``false_reject_rate``), review band,
        pixel, out-of-distribution limit and the named operating points.

        ``good`` must not have been used to build the bank (``fit`` passes its held-out images,
        or scores every fit image leave-one-out). ``source`` records where they came from (see
        :class:`~costfilter.calibration.Thresholds`). A model with several learned categories
        calibrates one at a time: ``category`` names it, and ``good`` are scored as that
        category. Returns how far these scores moved from the previous calibration (empty if
        there was none).
        """
        if not len(good):
            raise CostfilterError("no good images to calibrate on")
        if source == "new":
            self._refuse_fit_images(good)
        index = self._category_index(category)
        return self._apply_calibration(index, *self._calibration_scores([Path(p) for p in good], desc, index),
                                       source=source)

    def _refuse_fit_images(self, good: Sequence[Path | str]) -> None:
        """Images the model was fitted on score far lower than new ones (their own patches are in
        the bank), so thresholds set on them would reject good parts: refused by content."""
        fitted = set(self.state.training_hashes)
        if not fitted:
            return
        seen = [p for p in good if file_sha256(p)[:16] in fitted]
        if seen:
            raise CostfilterError(f"{len(seen)} of the {len(good)} images were used to fit this model (e.g. {seen[0]}); "
                                  "their scores are too low to set thresholds on: calibrate on good images it has "
                                  "not seen")

    def _apply_calibration(self, index: int | None, scores: list[float], peaks: list[float], typical: list[float],
                           *, source: str) -> dict[str, float]:
        """Set the model's thresholds (``index`` None) or learned category ``index``'s."""
        if index is None:
            return self._set_thresholds(scores, peaks, typical, source=source)
        return self._set_category_thresholds(index, scores, peaks, typical, source=source)

    def _calibration_scores(self, good: list[Path], desc: str, category: int | None
                            ) -> tuple[list[float], list[float], list[float]]:
        scores, peaks, typical = [], [], []
        for _, _, maps, sc, _ in self.scored_routed(good, desc, category):
            scores += sc
            peaks += [float(m.max()) for m in maps]
            typical += [float(typical_patch_score(m[None])) for m in maps]
        return scores, peaks, typical

    @property
    def learned(self) -> list[str]:
        """Names of the categories learned one after another (``fit --continue``), in order;
        empty for a model fitted once."""
        return [c.name for c in self.state.learned]

    def thresholds_for(self, category: str | None) -> Thresholds:
        """The thresholds an image scored as learned ``category`` is decided with (None, or a
        model of one category: the model's own)."""
        index = self._category_index(category) if category is not None and self.learned else None
        return self.require_fitted() if index is None else self.state.learned[index].thresholds

    def _category_index(self, category: str | None) -> int | None:
        names = self.learned
        if not names:
            if category is not None:
                raise CostfilterError(f"this model has no learned categories; got category {category!r}")
            return None
        if category not in names:
            raise CostfilterError(f"this model learned categories {', '.join(names)}: name one of them "
                                  f"(got {category!r})")
        return names.index(category)

    def _set_category_thresholds(self, index: int, scores: list[float], peaks: list[float], typical: list[float],
                                 *, source: str) -> dict[str, float]:
        learned = self.state.learned[index]
        previous = learned.calibration_scores
        learned.thresholds, learned.operating_points = thresholds_from_scores(
            scores, peaks, typical, self.config.calibration, source)
        learned.calibration_scores, learned.n_calibration_images = scores, len(scores)
        if index == 0:  # the first category's thresholds stand for the model where one set is shown
            self.thresholds, self.state.operating_points = learned.thresholds, learned.operating_points
            self.state.calibration_scores = scores
        return score_shift(previous, scores) if previous else {}

    def _set_thresholds(self, scores: list[float], peaks: list[float], typical: list[float], *, source: str
                        ) -> dict[str, float]:
        previous = self.state.calibration_scores
        self.thresholds, self.state.operating_points = thresholds_from_scores(
            scores, peaks, typical, self.config.calibration, source)
        self.state.calibration_scores = scores
        return score_shift(previous, scores) if previous else {}

    def set_operating_point(self, false_reject: float | None = None, threshold: float | None = None) -> OperatingPoint:
        """Choose the image threshold by a target false-reject rate (on the stored calibration
        scores) or as a fixed value; returns the point with its achieved rate and interval."""
        t = self.require_fitted()
        if self.learned:
            raise CostfilterError("this model has several learned categories, each with its own thresholds: "
                                  "re-calibrate one with calibrate --category")
        good = self.state.calibration_scores
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
        # Thresholds check themselves (a NaN or infinite threshold is refused) when made anew.
        self.thresholds = dataclasses.replace(t, image=point.threshold, image_false_reject=point.false_reject)
        self.state.operating_points = [point] + [p for p in self.state.operating_points if p.name != "chosen"]
        return point

    # ---------------------------------------------------------------- inference
    def require_fitted(self) -> Thresholds:
        """The thresholds; an unfitted detector is a one-line error."""
        if self.thresholds is None:
            raise CostfilterError("the detector is not fitted: call fit() or load a checkpoint")
        return self.thresholds

    def scored(self, source: Sequence[Path] | Sequence[np.ndarray], desc: str) -> Iterator[ScoredBatch]:
        """Score image files or ``(H, W[, 3])`` uint8 arrays, a batch at a time: yields names,
        source sizes ``(H, W)``, maps and scores. Maps are ``(S, S)``, or with tiling ``(H, W)``
        stitched from the tiles."""
        for names, sizes, maps, scores, _ in self.scored_routed(source, desc):
            yield names, sizes, maps, scores

    def scored_routed(self, source: Sequence[Path] | Sequence[np.ndarray], desc: str, category: int | None = None,
                      errors: list[tuple[str, str]] | None = None
                      ) -> Iterator[tuple[list[str], list[tuple[int, int]], list[torch.Tensor], list[float], list[int]]]:
        """As :meth:`scored`, plus the index of the learned category each image was scored as
        (always 0 for a model of one). ``category`` scores every image as that one instead.
        ``errors``: a list that files which cannot be read are appended to (``(path, message)``)
        while the others are scored; without it the first such file ends the run."""
        inputs = self.inputs
        if inputs.tiled:
            t, top = self.config.tiling, self.config.scoring.top_percent
            with inputs.bar(total=len(source), desc=desc, unit="img") as bar:
                for i, item in enumerate(source):
                    name = f"<array {i}>" if isinstance(item, np.ndarray) else str(item)
                    try:
                        image = as_rgb(item) if isinstance(item, np.ndarray) else read_image(item)
                    except DataError as exc:
                        if errors is None:
                            raise
                        errors.append((name, str(exc)))
                        bar.update()
                        continue
                    amap, score = score_tiled(image, t.size, t.overlap, top,
                                              lambda tiles: inputs.run_tiles(self.model, tiles), chunk=inputs.batch_size)
                    del image  # one full-size image at a time, however long the caller keeps the maps
                    yield [name], [(amap.shape[0], amap.shape[1])], [amap], [score], [0]
                    bar.update()
            return
        arrays = [a for a in source if isinstance(a, np.ndarray)]
        batches = (inputs.array_batches(arrays) if arrays
                   else inputs.batches(list(source), desc, skip_errors=errors is not None))  # type: ignore[arg-type]
        routes = bool(self.state.learned)
        for batch in batches:
            if errors is not None:
                errors += [(str(p), m) for p, m in batch.errors]
            n = len(batch.images)
            if n == 0 or (self.zero_shot and n < 2 and batch.errors):
                if errors is not None:  # a reference set left with one image cannot score it
                    errors += [(str(p), f"{p}: the other images of its zero-shot batch could not be read")
                               for p in batch.paths]
                continue
            with torch.inference_mode():
                if routes:
                    forced = None if category is None else torch.full((n,), category)
                    maps, scores, cats = self.model.routed(batch.images, forced)
                    index = cats.tolist()
                else:
                    maps, scores = self.model(batch.images)
                    index = [0] * n
            yield [str(p) for p in batch.paths], list(batch.sizes), list(maps), scores.tolist(), index

    def decide(self, score: float, typical: float = 0.0) -> str:
        """``unknown`` / ``reject`` / ``review`` / ``pass`` for one image (``typical``: its
        typical-patch score)."""
        return self.require_fitted().decide(score, typical)

    def predict(self, images: ImageInput | Sequence[ImageInput], *,
                errors: list[tuple[str, str]] | None = None) -> list[Prediction]:
        """Score image files or ``(H, W[, 3])`` uint8 arrays; one :class:`Prediction` each.

        ``errors``: a list that files which cannot be read are appended to as ``(path,
        message)``, while the rest are scored (without it, such a file raises
        :class:`~costfilter.errors.DataError`).

        Zero-shot: images are scored in batches against each other, and an image is rejected
        when it stands out from its batch (see :func:`~costfilter.methods.zeroshot.robust_outlier_threshold`)."""
        if not self.zero_shot:
            self.require_fitted()
        items = [images] if isinstance(images, (str, Path, np.ndarray)) else list(images)
        arrays = [x for x in items if isinstance(x, np.ndarray)]
        paths = [Path(x) for x in items if not isinstance(x, np.ndarray)]
        if arrays and paths:
            raise CostfilterError("predict() takes either paths or arrays, not both in one call")
        out: list[Prediction] = []
        learned = self.state.learned
        for names, sizes, maps, scores, cats in self.scored_routed(arrays or paths, "predict", errors=errors):
            if self.zero_shot:
                from .methods.zeroshot import robust_outlier_threshold

                t = robust_outlier_threshold(torch.tensor(scores), self.config.zeroshot.outlier_k)
                for name, size, m, s in zip(names, sizes, maps, scores):
                    out.append(Prediction(name, float(s), "reject" if s > t else "pass", m.numpy().astype(np.float32, copy=False),
                                          tuple(size), pixel_threshold=t))
                continue
            for name, size, m, s, c in zip(names, sizes, maps, scores, cats):
                # A model of several learned categories decides with the routed one's thresholds.
                t = learned[c].thresholds if learned else self.require_fitted()
                out.append(decided_prediction(name, size, m, s, t, pixel_threshold=t.pixel if learned else None,
                                              category=learned[c].name if learned else None))
        return out

    def evaluate(self, data: Sequence[Sample] | str | Path, fmt: str = "mvtec",
                 categories: Sequence[str] | None = None, *, eval_size: int | None = None,
                 mask_threshold: int = 0, keep_maps: bool = False) -> Evaluation:
        """Metrics on the ``test`` split: image metrics always, pixel metrics where every
        anomalous image has a mask. Masks are resized (nearest) to ``eval_size`` (default: the
        model's image size) and binarised as ``value > mask_threshold``."""
        if not self.zero_shot:
            self.require_fitted()
        test = split_of(_resolve_data(data, fmt, categories), "test")
        if not test:
            raise CostfilterError("no test images to evaluate on")
        return evaluate(self, test, eval_size or self.config.features.image_size, mask_threshold, keep_maps)

    # ------------------------------------------------------------- persistence
    def save(self, path: Path | str, force: bool = False, sign_key: str | None = None) -> str:
        """Write the checkpoint atomically (refuses to overwrite unless ``force``), signed when a
        key is given or ``COSTFILTER_SIGN_KEY`` is set; returns its SHA-256."""
        t = self.require_fitted()
        path = Path(path)
        check_writable(path, force)
        state = dict(self.state.to_dict(), thresholds=dataclasses.asdict(t))
        # The backbone's weights come from their package unless the method trained them;
        # everything learned or selected is saved.
        trained = getattr(self.model, "trained_feature_keys", set())
        tensors = {k: v for k, v in self.model.state_dict().items() if not k.startswith("features.") or k in trained}
        # Empty continual-learning tensors (one category, no replay) are left out: such a model's
        # file is the same as before continual learning existed.
        tensors = {k: v for k, v in tensors.items() if v.numel() or not k.endswith(LATER_TENSORS)}
        return save_checkpoint(path, tensors, self.config.to_dict(), state, signing_key(sign_key))

    @classmethod
    def load(cls, path: Path | str, *, progress: bool = True, sign_key: str | None = None) -> Detector:
        """Rebuild a detector from a checkpoint alone (backbone weights come from their package).
        With a signing key (given, or ``COSTFILTER_SIGN_KEY``) its signature must match."""
        key = signing_key(sign_key)
        tensors, config, state, digest = load_checkpoint(path, key)
        check_weights_file(path, config, state)
        try:
            det = cls(DetectorConfig.from_saved(config), progress=progress)
            _load_tensors(det.model, tensors)
            det.thresholds = Thresholds.from_dict(state.pop("thresholds"))
            det.state = DetectorState.from_dict(state, sha256=digest)
            det.state.signature = signature_status(path, key)
        except (CostfilterError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: checkpoint does not fit its own config ({str(exc).splitlines()[0]})") from None
        return det


def _without(samples: list[Sample], paths: Sequence[str]) -> list[Sample]:
    """``samples`` less those whose path is in ``paths`` (the images screening left out)."""
    gone = set(paths)
    return [x for x in samples if str(x.path) not in gone]


def decided_prediction(name: str, size: Sequence[int], amap: torch.Tensor, score: float, t: Thresholds,
                       **extra: object) -> Prediction:
    """One image's ``(S, S)`` (or source-size) map and score, decided with thresholds ``t`` (its
    typical patch, the map's median, decides ``unknown``)."""
    typical = float(typical_patch_score(amap[None]))
    return Prediction(name, float(score), t.decide(score, typical), amap.numpy().astype(np.float32, copy=False),
                      (int(size[0]), int(size[1])), typical, **extra)  # type: ignore[arg-type]


#: Tensors that checkpoints written before they existed lack; the fresh model's defaults stand in:
#: a bank's source image per row (leave-one-out calibration), the learned categories' rows and
#: DFM's replayed images (continual learning).
LATER_TENSORS = (".owners", "router.offsets", "replay", "replay_category")


def _load_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load saved tensors into a freshly built model. Buffers whose size depends on the data
    (memory bank, templates) are replaced; a parameter of the wrong shape is an error."""
    own = model.state_dict()
    unexpected = sorted(set(tensors) - set(own))
    missing = sorted(k for k in own if k not in tensors and not k.startswith("features.")
                     and not k.endswith(LATER_TENSORS))
    if unexpected or missing:
        raise CostfilterError(f"unexpected {unexpected[:3]} / missing {missing[:3]} tensors")
    for key, value in tensors.items():
        expected = own[key]
        if value.dtype != expected.dtype:
            raise CostfilterError(f"{key}: dtype {value.dtype} where the model has {expected.dtype}")
        if expected.shape != value.shape:
            owner, _, name = key.rpartition(".")
            module = model.get_submodule(owner)
            # Only a data-sized buffer may differ, and only in its row count; a placeholder with
            # rows (a bank) must stay non-empty, or scoring would index nothing.
            if (name not in module._buffers or value.ndim != expected.ndim or value.shape[1:] != expected.shape[1:]
                    or (expected.ndim and expected.shape[0] and not value.shape[0])):
                raise CostfilterError(f"{key}: shape {tuple(value.shape)} does not fit {tuple(expected.shape)}")
            module._buffers[name] = value.clone()
    for rows, owners in _ROW_OWNERS:
        for key in [k for k in tensors if k.endswith(owners)]:
            bank = key[: -len(owners)] + rows
            if bank in tensors and len(tensors[key]) != len(tensors[bank]):
                raise CostfilterError(f"{key}: {len(tensors[key])} rows for the {len(tensors[bank])} of {bank}")
    model.load_state_dict(tensors, strict=False)


#: (rows tensor, per-row owner tensor) name endings that must have equal lengths
_ROW_OWNERS = (("bank", "owners"), ("templates", "template_owners"))
