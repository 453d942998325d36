"""The public API: ``Detector(config).fit(data)``, ``.predict(images)``, ``.evaluate(samples)``,
``.save(path)``, ``Detector.load(path)``. The CLI and the benchmarks call only this."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .atomic import check_writable
from .bases.memory_bank import bank_size, collect_candidates, select_bank
from .calibration import holdout_split, quantile_threshold
from .checkpoint import load_checkpoint, save_checkpoint
from .config import DetectorConfig
from .data import Sample, categories_of, load_dataset, read_mask, split_of
from .data.loader import Batch, images_from_arrays, iter_batches
from .errors import CostfilterError
from .methods import METHODS
from .metrics import image_metrics, pixel_metrics

ImageInput = str | Path | np.ndarray


@dataclass
class Thresholds:
    """Decision thresholds calibrated on held-out normal images (never on test labels)."""

    image: float
    pixel: float
    n_calibration: int
    #: False-alarm rate the image threshold gives on the calibration images themselves.
    image_false_alarm: float
    #: Whether the calibration images were held out of the bank (False: too few images).
    held_out: bool = True


@dataclass
class Prediction:
    """One image's result. ``anomaly_map`` is ``(S, S)`` float32 at the model's resolution."""

    path: str
    score: float
    decision: str
    anomaly_map: np.ndarray = field(repr=False)
    size: tuple[int, int]

    def map_at_original_size(self) -> np.ndarray:
        """The anomaly map resized (bilinear) to the source image's ``(H, W)``."""
        from .viz import resize_map

        return resize_map(self.anomaly_map, self.size)


@dataclass
class SampleResult:
    """Per-image record of an evaluation."""

    path: str
    category: str
    defect: str
    label: int
    score: float


@dataclass
class Evaluation:
    """Metrics per category and their mean; per-image scores; maps/masks when kept."""

    per_category: dict[str, dict[str, float]]
    mean: dict[str, float]
    samples: list[SampleResult]
    maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    masks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    seconds: float = 0.0
    images_per_second: float = 0.0


def _resolve_data(data: Sequence[Sample] | str | Path, fmt: str, categories: Sequence[str] | None) -> list[Sample]:
    if isinstance(data, (str, Path)):
        return load_dataset(data, fmt, categories)
    return list(data)


class Detector:
    """An anomaly detector: fit on normal images, then score and localise.

    Example:
        >>> det = Detector().fit("mvtec_root/bottle")          # doctest: +SKIP
        >>> det.predict("part.png")[0].decision               # doctest: +SKIP
        'normal'
    """

    def __init__(self, config: DetectorConfig | None = None, *, progress: bool = True):
        self.config = config or DetectorConfig()
        self.config.validate()
        if self.config.method not in METHODS:
            raise CostfilterError(f"unknown method {self.config.method!r}; choose one of {', '.join(METHODS)}")
        self.progress = progress
        torch.manual_seed(self.config.seed)
        self.model = METHODS[self.config.method](self.config).eval()
        self.thresholds: Thresholds | None = None
        self.state: dict[str, Any] = {}

    # ------------------------------------------------------------------ fitting
    def _bar(self, **kw: Any) -> tqdm:
        return tqdm(disable=not self.progress, dynamic_ncols=True, **kw)

    def _features(self, paths: Sequence[Path], desc: str) -> Iterator[torch.Tensor]:
        size, bs = self.config.features.image_size, self.config.batch_size
        with self._bar(total=len(paths), desc=desc, unit="img") as bar, torch.inference_mode():
            for batch in iter_batches(paths, size, bs):
                yield self.model.features(batch.images)
                bar.update(len(batch.paths))

    def fit(self, data: Sequence[Sample] | str | Path, fmt: str = "mvtec",
            categories: Sequence[str] | None = None) -> Detector:
        """Fit on the normal ``train`` images of ``data`` (samples, or a dataset root in ``fmt``).

        A seeded fraction of them is held out of the bank to calibrate thresholds.
        """
        samples = split_of(_resolve_data(data, fmt, categories), "train")
        train = [s for s in samples if s.label == 0]
        if not train:
            raise CostfilterError("no normal training images to fit on")
        cfg = self.config
        fit_idx, cal_idx = holdout_split(len(train), cfg.calibration.holdout_fraction, cfg.seed)
        fit_paths = [train[i].path for i in fit_idx]
        cal_paths = [train[i].path for i in cal_idx] or fit_paths
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        grid = self.model.features.grid
        n_patches = len(fit_paths) * grid * grid
        candidates = collect_candidates(self._features(fit_paths, "features"), n_patches, cfg.memory, cfg.seed)
        timings["features_s"] = time.perf_counter() - t0
        with self._bar(total=bank_size(n_patches, cfg.memory), desc=f"coreset ({cfg.memory.sampler})",
                       unit="centre") as bar:
            bank = select_bank(candidates, n_patches, cfg.memory, cfg.seed, on_selected=bar.update)
        del candidates
        timings["coreset_s"] = time.perf_counter() - t0 - timings["features_s"]
        self.model.set_bank(bank)
        t1 = time.perf_counter()
        cal_scores, cal_max = [], []
        for batch in self._batches(cal_paths, "calibrate"):
            maps, scores = self._run(batch)
            cal_scores += scores.tolist()
            cal_max += maps.flatten(1).max(1).values.tolist()
        timings["calibration_s"] = time.perf_counter() - t1
        timings["fit_total_s"] = time.perf_counter() - t0
        c = cfg.calibration
        image_t = quantile_threshold(cal_scores, c.false_alarm_rate)
        self.thresholds = Thresholds(
            image=image_t,
            pixel=quantile_threshold(cal_max, c.pixel_false_alarm_rate),
            n_calibration=len(cal_scores),
            image_false_alarm=float(np.mean(np.asarray(cal_scores) > image_t)),
            held_out=bool(len(cal_idx)),
        )
        self.state = {
            "categories": categories_of(train),
            "n_train_images": len(train),
            "n_bank_images": len(fit_paths),
            "bank_size": int(bank.shape[0]),
            "calibration_scores": cal_scores,
            "timings": timings,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return self

    # ---------------------------------------------------------------- inference
    def _require_fitted(self) -> Thresholds:
        if self.thresholds is None:
            raise CostfilterError("the detector is not fitted: call fit() or load a checkpoint")
        return self.thresholds

    def _run(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            return self.model(batch.images)

    def _batches(self, paths: Sequence[Path], desc: str) -> Iterator[Batch]:
        with self._bar(total=len(paths), desc=desc, unit="img") as bar:
            for batch in iter_batches(paths, self.config.features.image_size, self.config.batch_size):
                yield batch
                bar.update(len(batch.paths))

    def _decide(self, score: float) -> str:
        return "anomalous" if score > self._require_fitted().image else "normal"

    def predict(self, images: ImageInput | Sequence[ImageInput]) -> list[Prediction]:
        """Score image files or ``(H, W[, 3])`` uint8 arrays; one :class:`Prediction` each."""
        self._require_fitted()
        items = [images] if isinstance(images, (str, Path, np.ndarray)) else list(images)
        arrays = [x for x in items if isinstance(x, np.ndarray)]
        paths = [Path(x) for x in items if not isinstance(x, np.ndarray)]
        if arrays and paths:
            raise CostfilterError("predict() takes either paths or arrays, not both in one call")
        out: list[Prediction] = []
        batches = [images_from_arrays(arrays, self.config.features.image_size)] if arrays else self._batches(paths, "predict")
        for batch in batches:
            maps, scores = self._run(batch)
            for p, size, m, s in zip(batch.paths, batch.sizes, maps.numpy(), scores.tolist()):
                out.append(Prediction(str(p), float(s), self._decide(s), m.astype(np.float32), tuple(size)))
        return out

    # --------------------------------------------------------------- evaluation
    def evaluate(self, data: Sequence[Sample] | str | Path, fmt: str = "mvtec",
                 categories: Sequence[str] | None = None, *, eval_size: int | None = None,
                 mask_threshold: int = 0, keep_maps: bool = False) -> Evaluation:
        """Metrics on the ``test`` split: image metrics always, pixel metrics where every
        anomalous image has a mask. Masks are resized (nearest) to ``eval_size`` (default: the
        model's image size) and binarised as ``value > mask_threshold``."""
        self._require_fitted()
        test = split_of(_resolve_data(data, fmt, categories), "test")
        if not test:
            raise CostfilterError("no test images to evaluate on")
        size = eval_size or self.config.features.image_size
        per_cat: dict[str, dict[str, float]] = {}
        records: list[SampleResult] = []
        ev = Evaluation(per_cat, {}, records)
        t0 = time.perf_counter()
        for cat in categories_of(test):
            items = [s for s in test if s.category == cat]
            with_masks = all(s.mask is not None for s in items if s.label == 1) and any(s.label == 1 for s in items)
            scores, maps, sizes = [], [], []
            for batch in self._batches([s.path for s in items], f"test {cat}"):
                m, sc = self._run(batch)
                scores += sc.tolist()
                sizes += batch.sizes
                if with_masks:
                    if size != m.shape[-1]:
                        m = torch.nn.functional.interpolate(m.unsqueeze(1), size=(size, size), mode="bilinear",
                                                            align_corners=False).squeeze(1)
                    maps.append(m.numpy().astype(np.float32))
            labels = [s.label for s in items]
            records += [SampleResult(str(s.path), cat, s.defect, s.label, sc) for s, sc in zip(items, scores)]
            metrics = image_metrics(scores, labels) if len(set(labels)) == 2 else {}
            if with_masks:
                cat_maps = np.concatenate(maps)
                cat_masks = np.stack([_mask_at(s, hw, size, mask_threshold) for s, hw in zip(items, sizes)])
                metrics.update(pixel_metrics(cat_maps, cat_masks))
                if keep_maps:
                    ev.maps[cat], ev.masks[cat] = cat_maps, cat_masks
            metrics["n_test"] = len(items)
            metrics["n_anomalous"] = int(sum(labels))
            per_cat[cat] = metrics
        ev.seconds = time.perf_counter() - t0
        ev.images_per_second = len(test) / ev.seconds
        keys = sorted({k for m in per_cat.values() for k in m if not k.startswith("n_")})
        ev.mean = {k: float(np.mean([m[k] for m in per_cat.values() if k in m])) for k in keys}
        return ev

    # ------------------------------------------------------------- persistence
    def save(self, path: Path | str, force: bool = False) -> str:
        """Write the checkpoint atomically (refuses to overwrite unless ``force``); returns its SHA-256."""
        t = self._require_fitted()
        path = Path(path)
        check_writable(path, force)
        state = dict(self.state, thresholds=dataclasses.asdict(t))
        tensors = {"memory.bank": self.model.memory.bank}
        return save_checkpoint(path, tensors, self.config.to_dict(), state)

    @classmethod
    def load(cls, path: Path | str, *, progress: bool = True) -> Detector:
        """Rebuild a detector from a checkpoint alone (backbone weights come from their package)."""
        tensors, config, state, digest = load_checkpoint(path)
        det = cls(DetectorConfig.from_dict(config), progress=progress)
        if "memory.bank" not in tensors:
            raise CostfilterError(f"{path}: checkpoint has no memory bank")
        det.model.set_bank(tensors["memory.bank"])
        det.thresholds = Thresholds(**state.pop("thresholds"))
        det.state = dict(state, sha256=digest)
        return det


def _mask_at(sample: Sample, image_hw: tuple[int, int], size: int, threshold: int) -> np.ndarray:
    """Ground truth of ``sample`` at ``size`` × ``size``: nearest resize, then ``> threshold``.

    ``image_hw`` is the decoded image's size; a mask of another size is an error naming it.
    """
    if sample.mask is None:
        return np.zeros((size, size), dtype=bool)
    raw = read_mask(sample.mask, image_hw)
    return np.asarray(Image.fromarray(raw).resize((size, size), Image.NEAREST)) > threshold
