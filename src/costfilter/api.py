"""The public API: ``Detector(config).fit(data)``, ``.predict(images)``, ``.evaluate(samples)``,
``.save(path)``, ``Detector.load(path)``. The CLI and the benchmarks call only this."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .atomic import check_writable
from .bases.memory_bank import Patches, bank_size, collect_patches, select_bank
from .calibration import (NAMED_POINTS, OperatingPoint, clopper_pearson, holdout_split, operating_point,
                          quantile_threshold)
from .checkpoint import load_checkpoint, save_checkpoint
from .config import DetectorConfig
from .data import Sample, categories_of, load_dataset, mask_at, split_of
from .data.imageio import as_rgb, read_image, resize_image, to_tensor
from .data.loader import Batch, images_from_arrays, iter_batches
from .errors import CheckpointError, CostfilterError
from .methods import METHODS, NO_FIT
from .methods.zeroshot import robust_outlier_threshold
from .metrics import image_metrics, pixel_metrics
from .records import inputs_digest
from .report import environment
from .tiling import cut_tiles, score_tiled, tile_boxes

ImageInput = str | Path | np.ndarray
#: Fit features kept in float16 for leave-one-out calibration up to this size (ELPV: 330 MB);
#: past it the fit images go through the backbone a second time instead.
FEATURE_CACHE_BYTES = 1 << 30


@dataclass
class Thresholds:
    """Decision thresholds calibrated on held-out normal images (never on test labels)."""

    #: image score above which a part is rejected
    image: float
    #: map value above which a pixel belongs to a defect region
    pixel: float
    n_calibration: int
    #: false-reject rate the image threshold gives on the calibration images themselves
    image_false_alarm: float
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

    def decide(self, score: float, typical: float = 0.0) -> str:
        """``unknown`` / ``reject`` / ``review`` / ``pass`` for one image (``typical``: its
        :func:`typical_patch_score`)."""
        if self.ood_limit is not None and typical > self.ood_limit:
            return "unknown"
        if score > self.image:
            return "reject"
        if self.review is not None and score > self.review:
            return "review"
        return "pass"


@dataclass
class Region:
    """A connected defect region at the source image's size; ``box`` is ``(x0, y0, x1, y1)``, inclusive."""

    box: tuple[int, int, int, int]
    area_px: int
    area_pct: float
    peak: float
    mean: float


@dataclass
class Prediction:
    """One image's result. ``anomaly_map`` is float32 ``(S, S)`` at the model's resolution, or
    ``(H, W)`` at the source's when the image was scored in tiles.

    ``decision`` is ``pass`` / ``review`` / ``reject``, or ``unknown`` when even a typical patch
    of the image is far from normal (``typical_score`` > the model's limit): another product,
    camera or lighting rather than a defect.
    """

    path: str
    score: float
    decision: str
    anomaly_map: np.ndarray = field(repr=False)
    size: tuple[int, int]
    typical_score: float = 0.0
    #: pixel threshold this image's regions use when it differs per image (zero-shot batches)
    pixel_threshold: float | None = None

    def map_at_original_size(self) -> np.ndarray:
        """The anomaly map resized (bilinear) to the source image's ``(H, W)``."""
        from .viz import resize_map

        return resize_map(self.anomaly_map, self.size)

    def regions(self, pixel_threshold: float, min_area: int = 1) -> list[Region]:
        """Connected regions (8-connectivity) of the map above ``pixel_threshold`` at the source size."""
        from scipy import ndimage

        amap = self.map_at_original_size()
        labels, n = ndimage.label(amap > pixel_threshold, structure=np.ones((3, 3), bool))
        out = []
        for i, sl in enumerate(ndimage.find_objects(labels), start=1):
            inside = labels[sl] == i
            area = int(inside.sum())
            if area < min_area:
                continue
            vals = amap[sl][inside]
            out.append(Region((sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1), area,
                              100.0 * area / amap.size, float(vals.max()), float(vals.mean())))
        return sorted(out, key=lambda r: -r.peak)


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


def _to_hwc(images: torch.Tensor) -> np.ndarray:
    """``(N, 3, S, S)`` uint8 tensor → ``(N, S, S, 3)`` array, the layout the synthesizer works in."""
    return images.permute(0, 2, 3, 1).contiguous().numpy()


def typical_patch_score(maps: torch.Tensor) -> torch.Tensor:
    """``(B, S, S)`` maps → ``(B,)`` median map value: how far a *typical* patch is from normal.

    A defect covers a minority of the image and leaves this low; a wrong product, camera or
    lighting moves almost every patch away from the bank and raises it. It drives ``unknown``.
    """
    return maps.flatten(1).median(dim=1).values


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

    @contextmanager
    def _loss_bar(self, steps: int, desc: str) -> Iterator[Callable[[int, float], None]]:
        """A training progress bar; yields ``tick(steps_done, loss)`` for the training loops."""
        with self._bar(total=steps, desc=desc, unit="step") as bar:
            def tick(n: int, loss: float) -> None:
                bar.update(n)
                bar.set_postfix(loss=f"{loss:.3f}")

            yield tick

    def _features(self, source: Sequence[Path] | torch.Tensor, desc: str) -> Iterator[torch.Tensor]:
        """Feature batches of image files, or of already decoded ``(N, 3, S, S)`` uint8 images."""
        size, bs = self.config.features.image_size, self.config.batch_size
        if isinstance(source, torch.Tensor):
            batches: Iterator[torch.Tensor] = (source[i : i + bs] for i in range(0, len(source), bs))
        else:
            batches = (b.images for b in iter_batches(source, size, bs))
        with self._bar(total=len(source), desc=desc, unit="img") as bar, torch.inference_mode():
            for images in batches:
                yield self.model.features(images)
                bar.update(len(images))

    def fit(self, data: Sequence[Sample] | str | Path, fmt: str = "mvtec",
            categories: Sequence[str] | None = None, *, resume: Path | None = None) -> Detector:
        """Fit on the normal ``train`` images of ``data`` (samples, or a dataset root in ``fmt``).

        A seeded fraction of them is held out of the bank (and of training) to calibrate
        thresholds and, for trained methods, to validate. ``resume`` (trained methods): a file
        where the training state is kept, so an interrupted fit picks up where it stopped.
        """
        if self.config.method in NO_FIT:
            raise CostfilterError(f"method {self.config.method!r} needs no fit: run predict or test directly")
        samples = split_of(_resolve_data(data, fmt, categories), "train")
        train = [s for s in samples if s.label == 0]
        if not train:
            raise CostfilterError("no normal training images to fit on")
        cfg = self.config
        holdout = cfg.calibration.holdout_fraction
        if holdout is None:
            holdout = 0.0 if cfg.method == "memory" else 0.1
        fit_idx, cal_idx = holdout_split(len(train), holdout, cfg.seed)
        fit_samples = [train[i] for i in fit_idx]
        fit_paths = [s.path for s in fit_samples]
        cal_paths = [train[i].path for i in cal_idx]
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        patches = None
        if cfg.method == "memory":
            source, row_owner = self._load_images(fit_paths, "load fit tiles") if self.tiled else (fit_paths, None)
            bank, owners, patches = self._build_bank(source, timings, row_owner, keep_features=not cal_paths)
            self.model.set_bank(bank, owners)
        elif cfg.method == "dfm":
            self._fit_dfm(fit_samples, cal_paths or fit_paths, timings)
        else:
            self._fit_costfilter(fit_samples, cal_paths or fit_paths, timings, resume)
        t1 = time.perf_counter()
        if cal_paths:
            self.calibrate(cal_paths, source="holdout", desc="calibrate")
        elif cfg.method == "memory":
            self._set_thresholds(*self._leave_one_out(fit_paths, patches), source="leave-one-out")
        else:
            self.calibrate(fit_paths, source="fit", desc="calibrate on fit images")
        timings["calibration_s"] = time.perf_counter() - t1
        timings["fit_total_s"] = time.perf_counter() - t0
        bank = self._bank()
        self.state.update({
            "categories": categories_of(train),
            "n_train_images": len(train),
            "n_bank_images": len(fit_samples),
            "n_calibration_images": len(cal_paths) or len(fit_paths),
            "bank_size": int(bank.shape[0]) if bank is not None else None,
            "timings": timings,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "training_data": inputs_digest([s.path for s in train]),
            "environment": {"versions": environment()["versions"], "cpu_count": os.cpu_count()},
        })
        return self

    def _bank(self) -> torch.Tensor | None:
        memory = getattr(self.model, "memory", None) or getattr(getattr(self.model, "base", None), "memory", None)
        if memory is not None:
            return memory.bank
        return getattr(self.model, "bank", None)

    def _build_bank(self, images: Sequence[Path] | torch.Tensor, timings: dict[str, float],
                    row_owner: np.ndarray | None = None, keep_features: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor, Patches]:
        """Stream features of ``images`` (files or decoded rows) and select the memory bank.

        Returns the bank ``(K, C)``, each row's source image ``(K,)`` (``row_owner[i]`` is the
        image of input row ``i`` when rows are tiles) and the collected patches, whose float16
        copy of every feature map is kept when ``keep_features`` and it fits ``FEATURE_CACHE_BYTES``.
        """
        cfg = self.config
        t0 = time.perf_counter()
        n_patches = len(images) * self.model.features.grid ** 2
        patches = collect_patches(self._features(images, "features"), n_patches, cfg.memory, cfg.seed,
                                  FEATURE_CACHE_BYTES if keep_features else 0)
        timings["features_s"] = time.perf_counter() - t0
        with self._bar(total=bank_size(n_patches, cfg.memory), desc=f"coreset ({cfg.memory.sampler})",
                       unit="centre") as bar:
            bank, owners = select_bank(patches, cfg.memory, cfg.seed, on_selected=bar.update)
        if row_owner is not None:
            owners = torch.from_numpy(np.asarray(row_owner))[owners]
        timings["coreset_s"] = time.perf_counter() - t0 - timings["features_s"]
        return bank, owners, patches

    def _leave_one_out(self, fit_paths: Sequence[Path], patches: Patches | None
                       ) -> tuple[list[float], list[float], list[float]]:
        """Scores, map peaks and typical-patch scores of every fit image against the bank without
        its own rows: a holdout's honesty with every image in the bank."""
        scores: list[float] = []
        maps_: list[torch.Tensor] = []
        bs, model = self.config.batch_size, self.model
        with self._bar(total=len(fit_paths), desc="calibrate (leave-one-out)", unit="img") as bar, torch.inference_mode():
            if self.tiled:
                t, top = self.config.tiling, self.config.scoring.top_percent
                for i, path in enumerate(fit_paths):
                    amap, score = score_tiled(read_image(path), t.size, t.overlap, top,
                                              lambda tiles, i=i: self._run_tiles(tiles, exclude=i))
                    maps_.append(amap)
                    scores.append(score)
                    bar.update()
            elif patches is not None and patches.cache is not None:
                for i in range(0, len(fit_paths), bs):
                    feats = patches.cache[i : i + bs].float()
                    m, sc = model.score_features(feats, torch.arange(i, i + len(feats)))
                    maps_ += list(m)
                    scores += sc.tolist()
                    bar.update(len(feats))
            else:
                start = 0
                for batch in iter_batches(fit_paths, self.config.features.image_size, bs):
                    n = len(batch.paths)
                    m, sc = model(batch.images, torch.arange(start, start + n))
                    maps_ += list(m)
                    scores += sc.tolist()
                    start += n
                    bar.update(n)
        peaks = [float(m.max()) for m in maps_]
        typical = [float(typical_patch_score(m[None])) for m in maps_]
        return scores, peaks, typical

    @property
    def tiled(self) -> bool:
        """True when images are scored tile by tile (``config.tiling.size`` > 0)."""
        return self.config.tiling.size > 0

    def _load_images(self, paths: Sequence[Path], desc: str) -> tuple[torch.Tensor, np.ndarray]:
        """Decoded ``(N, 3, S, S)`` uint8 model inputs and, per row, the index of its source path:
        one row per image, or with tiling one row per tile."""
        if not self.tiled:
            return torch.cat([b.images for b in self._batches(paths, desc)]), np.arange(len(paths))
        t, size = self.config.tiling, self.config.features.image_size
        rows, owners = [], []
        with self._bar(total=len(paths), desc=desc, unit="img") as bar:
            for i, p in enumerate(paths):
                image = read_image(p)
                tiles = cut_tiles(image, tile_boxes(image.shape[:2], t.size, t.overlap))
                rows.append(to_tensor([resize_image(x, size) for x in tiles]))
                owners += [i] * len(tiles)
                bar.update()
        return torch.cat(rows), np.array(owners)

    def _fit_dfm(self, fit_samples: Sequence[Sample], cal_paths: Sequence[Path], timings: dict[str, float]) -> None:
        """The bank as for the memory bank, then adapter + temperature trained end to end."""
        from .training.dfm import train_dfm

        decoded = self._load_images([s.path for s in fit_samples], "load fit images")[0]
        self.model.set_bank(self._build_bank(decoded, timings)[0])
        val_images = _to_hwc(self._load_images(cal_paths, "load held-out images")[0])
        with self._loss_bar(self.config.dfm.steps, "train dfm") as tick:
            report = train_dfm(self.model, _to_hwc(decoded), val_images, self.config, progress=tick)
        timings["train_s"] = report["seconds"]
        self.state["training"] = report

    def _fit_costfilter(self, fit_samples: Sequence[Sample], cal_paths: Sequence[Path], timings: dict[str, float],
                        resume: Path | None) -> None:
        """Base first (bank + templates, or a trained reconstructor), then the filtering network."""
        from .filtering import CostFilterNet
        from .training.costfilter import fit_embedding_base, fit_reconstruction_base, train_filter

        cfg, model = self.config, self.model
        cats = categories_of(list(fit_samples))
        if len(cats) != cfg.costfilter.n_classes:
            # The class-aware adaptor needs one output per category seen at fit.
            cfg.costfilter.n_classes = len(cats)
            model.filter = CostFilterNet(len(model.groups), model.features.channels, tuple(cfg.costfilter.widths),
                                         len(cats))
        t0 = time.perf_counter()
        images, owners = self._load_images([s.path for s in fit_samples], "load fit images")
        val_images = self._load_images(cal_paths, "load held-out images")[0]
        template_index = None
        if cfg.costfilter.base == "memory":
            bank = self._build_bank(images, timings)[0]  # decoded once, above
            with torch.inference_mode():
                template_index = fit_embedding_base(model, bank, images, cfg, cfg.batch_size)
        else:
            with self._bar(total=cfg.costfilter.recon_steps, desc="reconstructor", unit="step") as bar:
                losses = fit_reconstruction_base(model, images, cfg, bar.update)
            self.state["reconstruction_loss"] = [losses[0], losses[-1]] if losses else []
        with torch.inference_mode():
            init = torch.cat([model.base(model.features(val_images[i : i + 16]))[0] for i in range(0, len(val_images), 16)])
        model.init_scale.fill_(float(init.median()))
        timings["base_s"] = time.perf_counter() - t0
        classes = np.array([cats.index(s.category) for s in fit_samples])[owners]
        with self._loss_bar(cfg.costfilter.steps, "train filter") as tick:
            report = train_filter(model, _to_hwc(images), classes, template_index, _to_hwc(val_images), cfg,
                                  resume=resume, progress=tick)
        timings["train_s"] = report.seconds
        self.state["training"] = dataclasses.asdict(report)
        self.state["class_names"] = cats

    def calibrate(self, good: Sequence[Path | str], *, source: str = "new", desc: str = "calibrate") -> dict[str, Any]:
        """Set every threshold from good images alone: image (``false_reject_rate``), review band,
        pixel, out-of-distribution limit and the named operating points.

        ``good`` must not have been used to build the bank (``fit`` passes its held-out images,
        or scores every fit image leave-one-out). ``source`` records where they came from (see
        :class:`Thresholds`). Returns how far these scores moved from the previous calibration,
        if there was one.
        """
        if not len(good):
            raise CostfilterError("no good images to calibrate on")
        scores, peaks, typical = [], [], []
        for _, _, maps, sc in self._scored([Path(p) for p in good], desc):
            scores += sc
            peaks += [float(m.max()) for m in maps]
            typical += [float(typical_patch_score(m[None])) for m in maps]
        return self._set_thresholds(scores, peaks, typical, source=source)

    def _set_thresholds(self, scores: list[float], peaks: list[float], typical: list[float], *, source: str
                        ) -> dict[str, Any]:
        """Thresholds and operating points from good images' scores, map peaks and typical-patch
        scores; returns the score shift against the previous calibration (empty if none)."""
        c = self.config.calibration
        honest = source != "fit"
        previous = self.state.get("calibration_scores")
        point = operating_point(scores, c.false_reject_rate, "chosen")
        review = operating_point(scores, c.review_false_reject_rate).threshold if c.review_false_reject_rate else None
        self.thresholds = Thresholds(
            image=point.threshold,
            pixel=quantile_threshold(peaks, c.pixel_false_alarm_rate),
            n_calibration=len(scores),
            image_false_alarm=point.false_reject,
            held_out=honest,
            review=review,
            ood_limit=c.ood_factor * max(typical) if c.ood_factor > 0 and honest else None,
            source=source,
        )
        points = [point] + [operating_point(scores, r, name) for name, r in NAMED_POINTS.items()]
        self.state["operating_points"] = [dataclasses.asdict(p) for p in points]
        self.state["calibration_scores"] = scores
        shift: dict[str, Any] = {}
        if previous:
            from scipy.stats import ks_2samp

            ks = ks_2samp(previous, scores)
            shift = {"previous_median": float(np.median(previous)), "new_median": float(np.median(scores)),
                     "median_shift": float(np.median(scores) - np.median(previous)),
                     "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue)}
        return shift

    def set_operating_point(self, false_reject: float | None = None, threshold: float | None = None) -> OperatingPoint:
        """Choose the image threshold by a target false-reject rate (on the stored held-out good
        scores) or as a fixed value; returns the point with its achieved rate and interval."""
        t = self._require_fitted()
        good = self.state.get("calibration_scores") or []
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
        t.image, t.image_false_alarm = point.threshold, point.false_reject
        self.state["operating_points"] = [dataclasses.asdict(point)] + [
            p for p in self.state.get("operating_points", []) if p["name"] != "chosen"]
        return point

    # ---------------------------------------------------------------- inference
    def _require_fitted(self) -> Thresholds:
        if self.thresholds is None:
            raise CostfilterError("the detector is not fitted: call fit() or load a checkpoint")
        return self.thresholds

    def _run(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            return self.model(batch.images)

    def _run_tiles(self, tiles: Sequence[np.ndarray], exclude: int | None = None) -> torch.Tensor:
        """``(n, S, S)`` maps of raw tiles, resized and run ``batch_size`` at a time; ``exclude``:
        the fit image whose bank rows the tiles must not match (leave-one-out calibration)."""
        size, bs = self.config.features.image_size, self.config.batch_size
        batch = to_tensor([resize_image(x, size) for x in tiles])
        with torch.inference_mode():
            if exclude is None:
                return torch.cat([self.model(batch[i : i + bs])[0] for i in range(0, len(batch), bs)])
            return torch.cat([self.model(batch[i : i + bs], torch.full((len(batch[i : i + bs]),), exclude))[0]
                              for i in range(0, len(batch), bs)])

    def _scored(self, source: Sequence[Path] | Sequence[np.ndarray], desc: str
                ) -> Iterator[tuple[list[str], list[tuple[int, int]], list[torch.Tensor], list[float]]]:
        """Score image files or ``(H, W[, 3])`` uint8 arrays, a batch at a time: yields names,
        source sizes ``(H, W)``, maps and scores. Maps are ``(S, S)``, or with tiling ``(H, W)``
        stitched from the tiles."""
        arrays = [a for a in source if isinstance(a, np.ndarray)]
        if self.tiled:
            t, top = self.config.tiling, self.config.scoring.top_percent
            with self._bar(total=len(source), desc=desc, unit="img") as bar:
                for i, item in enumerate(source):
                    image = as_rgb(item) if isinstance(item, np.ndarray) else read_image(item)
                    amap, score = score_tiled(image, t.size, t.overlap, top, self._run_tiles)
                    name = f"<array {i}>" if isinstance(item, np.ndarray) else str(item)
                    yield [name], [image.shape[:2]], [amap], [score]
                    bar.update()
            return
        size = self.config.features.image_size
        if arrays:
            # Near-equal chunks of at most a batch: memory stays bounded, and a zero-shot batch
            # (its own reference set) is never a lone image.
            bs = self.config.zeroshot.batch_size if self.zero_shot else self.config.batch_size
            if self.zero_shot and len(arrays) < 2:
                raise CostfilterError(f"zero-shot scoring needs at least 2 images, got {len(arrays)}")
            chunks = np.array_split(np.arange(len(arrays)), -(-len(arrays) // bs))
            batches: Iterable[Batch] = (images_from_arrays([arrays[i] for i in c], size, start=int(c[0]))
                                        for c in chunks)
        else:
            batches = self._batches(list(source), desc)  # type: ignore[arg-type]
        for batch in batches:
            maps, scores = self._run(batch)
            yield [str(p) for p in batch.paths], list(batch.sizes), list(maps), scores.tolist()

    @property
    def zero_shot(self) -> bool:
        """True for methods that score a batch against itself and need no fit."""
        return self.config.method in NO_FIT

    def _batches(self, paths: Sequence[Path], desc: str) -> Iterator[Batch]:
        bs = self.config.zeroshot.batch_size if self.zero_shot else self.config.batch_size
        if self.zero_shot and len(paths) < 2:
            raise CostfilterError(f"zero-shot scoring needs at least 2 images, got {len(paths)}")
        with self._bar(total=len(paths), desc=desc, unit="img") as bar:
            for batch in iter_batches(paths, self.config.features.image_size, bs, even=self.zero_shot):
                yield batch
                bar.update(len(batch.paths))

    def decide(self, score: float, typical: float = 0.0) -> str:
        """``unknown`` / ``reject`` / ``review`` / ``pass`` for one image (``typical``: its
        :func:`typical_patch_score`)."""
        return self._require_fitted().decide(score, typical)

    def predict(self, images: ImageInput | Sequence[ImageInput]) -> list[Prediction]:
        """Score image files or ``(H, W[, 3])`` uint8 arrays; one :class:`Prediction` each.

        Zero-shot: images are scored in batches against each other, and an image is rejected
        when it stands out from its batch (see :func:`robust_outlier_threshold`)."""
        if not self.zero_shot:
            self._require_fitted()
        items = [images] if isinstance(images, (str, Path, np.ndarray)) else list(images)
        arrays = [x for x in items if isinstance(x, np.ndarray)]
        paths = [Path(x) for x in items if not isinstance(x, np.ndarray)]
        if arrays and paths:
            raise CostfilterError("predict() takes either paths or arrays, not both in one call")
        out: list[Prediction] = []
        for names, sizes, maps, scores in self._scored(arrays or paths, "predict"):
            if self.zero_shot:
                t = robust_outlier_threshold(torch.tensor(scores), self.config.zeroshot.outlier_k)
                for name, size, m, s in zip(names, sizes, maps, scores):
                    out.append(Prediction(name, float(s), "reject" if s > t else "pass", m.numpy().astype(np.float32),
                                          tuple(size), pixel_threshold=t))
                continue
            for name, size, m, s in zip(names, sizes, maps, scores):
                d = float(typical_patch_score(m[None]))
                out.append(Prediction(name, float(s), self.decide(s, d), m.numpy().astype(np.float32), tuple(size), d))
        return out

    # --------------------------------------------------------------- evaluation
    def evaluate(self, data: Sequence[Sample] | str | Path, fmt: str = "mvtec",
                 categories: Sequence[str] | None = None, *, eval_size: int | None = None,
                 mask_threshold: int = 0, keep_maps: bool = False) -> Evaluation:
        """Metrics on the ``test`` split: image metrics always, pixel metrics where every
        anomalous image has a mask. Masks are resized (nearest) to ``eval_size`` (default: the
        model's image size) and binarised as ``value > mask_threshold``."""
        if not self.zero_shot:
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
            if self.zero_shot:
                # Batches are reference sets: shuffle so each mixes good and defective images.
                order = np.random.default_rng(self.config.seed).permutation(len(items))
                items = [items[i] for i in order]
            with_masks = all(s.mask is not None for s in items if s.label == 1) and any(s.label == 1 for s in items)
            scores, maps, sizes = [], [], []
            for _, hw, batch_maps, sc in self._scored([s.path for s in items], f"test {cat}"):
                scores += sc
                sizes += hw
                if with_masks:
                    for m in batch_maps:
                        if m.shape != (size, size):
                            m = torch.nn.functional.interpolate(m[None, None], size=(size, size), mode="bilinear",
                                                                align_corners=False)[0, 0]
                        maps.append(m.numpy().astype(np.float32)[None])
            labels = [s.label for s in items]
            records += [SampleResult(str(s.path), cat, s.defect, s.label, sc) for s, sc in zip(items, scores)]
            metrics = image_metrics(scores, labels) if len(set(labels)) == 2 else {}
            if with_masks:
                cat_maps = np.concatenate(maps)
                cat_masks = np.stack([mask_at(s.mask, hw, size, mask_threshold) for s, hw in zip(items, sizes)])
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
        # The backbone's weights come from their package; everything learned or selected is saved.
        tensors = {k: v for k, v in self.model.state_dict().items() if not k.startswith("features.")}
        return save_checkpoint(path, tensors, self.config.to_dict(), state)

    @classmethod
    def load(cls, path: Path | str, *, progress: bool = True) -> Detector:
        """Rebuild a detector from a checkpoint alone (backbone weights come from their package)."""
        tensors, config, state, digest = load_checkpoint(path)
        try:
            det = cls(DetectorConfig.from_saved(config), progress=progress)
            _load_tensors(det.model, tensors)
            det.thresholds = Thresholds(**state.pop("thresholds"))
        except (CostfilterError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: checkpoint does not fit its own config ({str(exc).splitlines()[0]})") from None
        det.state = dict(state, sha256=digest)
        return det


def _load_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load saved tensors into a freshly built model. Buffers whose size depends on the data
    (memory bank, templates) are replaced; a parameter of the wrong shape is an error."""
    own = model.state_dict()
    unexpected = sorted(set(tensors) - set(own))
    # A bank's source image per row ("owners") was not kept before leave-one-out calibration.
    missing = sorted(k for k in own if k not in tensors and not k.startswith("features.")
                     and not k.endswith(".owners"))
    if unexpected or missing:
        raise CostfilterError(f"unexpected {unexpected[:3]} / missing {missing[:3]} tensors")
    for key, value in tensors.items():
        if own[key].shape != value.shape:
            owner, _, name = key.rpartition(".")
            module = model.get_submodule(owner)
            if name not in module._buffers:
                raise CostfilterError(f"{key}: shape {tuple(value.shape)} does not match {tuple(own[key].shape)}")
            module._buffers[name] = value.clone()
    model.load_state_dict(tensors, strict=False)
