"""The public API: ``Detector(config).fit(data)``, ``.predict(images)``, ``.evaluate(data)``,
``.calibrate(good)``, ``.save(path)``, ``Detector.load(path)``.

A thin façade over the pipeline: the input pipeline (:mod:`.inputs`) feeds the registered
method's model (:mod:`.methods`); fitting is :mod:`.fitting`; thresholds and every decision come
from :mod:`.decisions`; results are :mod:`.results` types, metrics come from :mod:`.evaluation`.
The CLI, the service, export, Ray and the benchmarks call only this.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from . import fitting
from .atomic import check_writable
from .checkpoint import LATER_TENSORS, load_checkpoint, load_tensors, save_checkpoint, signature_status
from .compute import Compute, choose, resolve
from .config import DetectorConfig
from .data import Sample, split_of
from .decisions import (
    OperatingPoint,
    Thresholds,
    category_index,
    chosen_point,
    decided_batch,
    outlier_predictions,
    set_thresholds,
    thresholds_for,
)
from .errors import CheckpointError, CostfilterError
from .evaluation import ScoredBatch, evaluate
from .inputs import Inputs
from .integrity import check_weights_file, signing_key
from .maps import typical_patch_score
from .methods import get_method
from .provenance import file_sha256
from .results import Evaluation, ImageInput, Prediction
from .state import DetectorState
from .tiling import tiled_scores


class Detector:
    """An anomaly detector: fit on normal images, then score and localise.

    Example:
        >>> det = Detector().fit("mvtec_root/bottle")          # doctest: +SKIP
        >>> det.predict("part.png")[0].decision               # doctest: +SKIP
        'pass'
    """

    def __init__(self, config: DetectorConfig | None = None, *, progress: bool = True, device: str | None = None,
                 precision: str | None = None):
        self.config = config or DetectorConfig()
        self.config.validate()
        self.method = get_method(self.config.method)
        self.progress = progress
        self.compute: Compute = choose(device, precision)
        self.model = self.build_model()
        self.thresholds: Thresholds | None = None
        self.state = DetectorState()

    def build_model(self) -> torch.nn.Module:
        """A fresh model for this config (seeded), on this detector's device."""
        torch.manual_seed(self.config.seed)
        with torch.device("cpu"):  # built where the weights load, then moved as one
            model = self.method.build(self.config)
        return self._place(model.eval())

    def _place(self, model: torch.nn.Module) -> torch.nn.Module:
        from .features import FeatureExtractor

        model.to(self.compute.device)
        for m in model.modules():
            if isinstance(m, FeatureExtractor):
                m.compute = self.compute
        return model

    def to(self, device: str | None = None, precision: str | None = None) -> Detector:
        """Run on ``device`` (``auto``, ``cpu``, ``cuda[:N]``, ``mps``) at ``precision`` (``fp32``,
        ``bf16``, ``fp16``: the backbone at inference, and training); unnamed ones stay."""
        self.compute = resolve(device or str(self.compute.device), precision or self.compute.precision)
        self._place(self.model)
        return self

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
        fitting.fit(self, data, fmt, categories, resume=resume, observer=observer)
        return self

    def flagged_predictions(self) -> list[Prediction]:
        """The flagged training images scored by this model, each without its own bank rows where
        it is in a memory bank (so its defect shows as a new part's would)."""
        return fitting.flagged_predictions(self)

    def extend(self, data: Sequence[Sample] | str | Path, fmt: str = "mvtec", categories: Sequence[str] | None = None,
               *, name: str | None = None) -> Detector:
        """Continual learning: add the normal ``train`` images of ``data`` to this fitted model as
        a new category, named ``name`` (default: its category names joined by ``+``).

        Earlier categories keep their bank rows and thresholds; each image is then scored as
        the category whose normal patches it is nearest to (see
        :class:`~costfilter.bank.routing.CategoryRouter`) and decided with that category's
        thresholds. The memory bank appends the new category's coreset, so earlier categories'
        scores do not change; DFM fine-tunes its adapter on the new images, replaying the
        stored images of earlier categories (``dfm.replay_share``). A model fitted once becomes
        the first category.
        """
        fitting.extend(self, data, fmt, categories, name=name)
        return self

    def teach(self, good: Sequence[Path | str], *, who: str | None = None, recalibrate: bool = True
              ) -> dict[str, object]:
        """Append confirmed-good images (files) to this fitted model within its category, in
        place: their patches the bank does not cover yet join it (at the bank's own density),
        and every threshold is re-calibrated on the earlier calibration images plus these, each
        scored leave-one-out (the earlier images keep their stored scores, which can only have
        fallen). Images the model already holds are skipped. Memory bank, DFM and CostFilter-AD
        over the memory base (banks and templates only, no training). ``who`` is recorded with
        the step. ``recalibrate`` False keeps every threshold as it is (the images still join the
        bank). Returns what changed (images, rows, thresholds before and after).
        """
        return fitting.teach(self, [Path(p) for p in good], who=who, recalibrate=recalibrate)

    def calibrate(self, good: Sequence[Path | str], *, source: str = "new", desc: str = "calibrate",
                  category: str | None = None) -> dict[str, float]:
        """Set every threshold from good images alone: image (``false_reject_rate``), review band,
        pixel, out-of-distribution limit and the named operating points.

        ``good`` must not have been used to build the bank (``fit`` passes its held-out images,
        or scores every fit image leave-one-out). ``source`` records where they came from (see
        :class:`~costfilter.decisions.Thresholds`). A model with several learned categories
        calibrates one at a time: ``category`` names it, and ``good`` are scored as that
        category. Returns how far these scores moved from the previous calibration (empty if
        there was none).
        """
        if not len(good):
            raise CostfilterError("no good images to calibrate on")
        if source == "new":
            self._refuse_fit_images(good)
        index = category_index(self.learned, category)
        return set_thresholds(self, index, *self._calibration_scores([Path(p) for p in good], desc, index),
                              self.config.calibration, source)

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
        return thresholds_for(self, category)

    def set_operating_point(self, false_reject: float | None = None, threshold: float | None = None) -> OperatingPoint:
        """Choose the image threshold by a target false-reject rate (on the stored calibration
        scores) or as a fixed value; returns the point with its achieved rate and interval."""
        t = self.require_fitted()
        if self.learned:
            raise CostfilterError("this model has several learned categories, each with its own thresholds: "
                                  "re-calibrate one with calibrate --category")
        self.thresholds, point = chosen_point(t, self.state.calibration_scores, false_reject, threshold)
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
            with inputs.bar(total=len(source), desc=desc, unit="img") as bar:
                for _, name, amap, score in tiled_scores(source, self.config.tiling, self.config.scoring.top_percent,
                                                         inputs.batch_size,
                                                         lambda _, tiles: inputs.run_tiles(self.model, tiles),
                                                         errors, bar):
                    yield [name], [(amap.shape[0], amap.shape[1])], [amap], [score], [0]
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
                    forced = None if category is None else torch.full((n,), category, device=self.compute.device)
                    maps, scores, cats = self.model.routed(batch.images, forced)
                    index = cats.tolist()
                else:
                    maps, scores = self.model(batch.images)
                    index = [0] * n
                maps, scores = maps.float().cpu(), scores.float().cpu()
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
        when it stands out from its batch (see :func:`~costfilter.methods.zeroshot.model.robust_outlier_threshold`)."""
        if not self.zero_shot:
            self.require_fitted()
        items = [images] if isinstance(images, (str, Path, np.ndarray)) else list(images)
        arrays = [x for x in items if isinstance(x, np.ndarray)]
        paths = [Path(x) for x in items if not isinstance(x, np.ndarray)]
        if arrays and paths:
            raise CostfilterError("predict() takes either paths or arrays, not both in one call")
        out: list[Prediction] = []
        for names, sizes, maps, scores, cats in self.scored_routed(arrays or paths, "predict", errors=errors):
            if self.zero_shot:
                from .methods.zeroshot.model import robust_outlier_threshold

                t = robust_outlier_threshold(torch.tensor(scores, device="cpu"), self.config.zeroshot.outlier_k)
                out += outlier_predictions(names, sizes, maps, scores, t)
            else:
                out += decided_batch(self, names, sizes, maps, scores, cats)
        return out

    def evaluate(self, data: Sequence[Sample] | str | Path, fmt: str = "mvtec",
                 categories: Sequence[str] | None = None, *, eval_size: int | None = None,
                 mask_threshold: int = 0, keep_maps: bool = False) -> Evaluation:
        """Metrics on the ``test`` split: image metrics always, pixel metrics where every
        anomalous image has a mask. Masks are resized (nearest) to ``eval_size`` (default: the
        model's image size) and binarised as ``value > mask_threshold``."""
        if not self.zero_shot:
            self.require_fitted()
        test = split_of(fitting.resolve_data(data, fmt, categories), "test")
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
        tensors = {k: v.cpu() for k, v in tensors.items() if v.numel() or not k.endswith(LATER_TENSORS)}
        return save_checkpoint(path, tensors, self.config.to_dict(), state, signing_key(sign_key))

    @classmethod
    def load(cls, path: Path | str, *, progress: bool = True, sign_key: str | None = None, device: str | None = None,
             precision: str | None = None) -> Detector:
        """Rebuild a detector from a checkpoint alone (backbone weights come from their package).
        With a signing key (given, or ``COSTFILTER_SIGN_KEY``) its signature must match. It is
        opened on the CPU, then moved to ``device`` / ``precision`` (default: the process's)."""
        compute = choose(device, precision)
        key = signing_key(sign_key)
        tensors, config, state, digest = load_checkpoint(path, key)
        check_weights_file(path, config, state)
        try:
            det = cls(DetectorConfig.from_saved(config), progress=progress, device="cpu", precision="fp32")
            load_tensors(det.model, tensors)
            det.thresholds = Thresholds.from_dict(state.pop("thresholds"))
            det.state = DetectorState.from_dict(state, sha256=digest)
            det.state.signature = signature_status(path, key)
        except (CostfilterError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: checkpoint does not fit its own config ({str(exc).splitlines()[0]})") from None
        return det.to(str(compute.device), compute.precision)


