"""Fitting a detector: the normal fit images chosen and screened, the method's fit step run on
them, thresholds set from good images, and the fit's facts recorded in the state. Also
continual learning's step (a new category added to a fitted model). :class:`~costfilter.api.Detector`
calls these; ``det`` is that detector."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .config import DetectorConfig
from .data import Sample, categories_of, load_dataset, split_of
from .decisions import category_index, decided_prediction, holdout_split, set_thresholds
from .errors import CostfilterError
from .integrity import weights_digest, weights_source
from .provenance import environment, file_sha256, inputs_digest
from .results import Prediction
from .screening import FlaggedImage, Screening, distinct_hashes, screen
from .state import LearnedCategory
from .training.job import FitJob, FitResult

if TYPE_CHECKING:
    from .api import Detector


def resolve_data(data: Sequence[Sample] | str | Path, fmt: str, categories: Sequence[str] | None) -> list[Sample]:
    if isinstance(data, (str, Path)):
        return load_dataset(data, fmt, categories)
    return list(data)


def fit(det: Detector, data: Sequence[Sample] | str | Path, fmt: str = "mvtec", categories: Sequence[str] | None = None,
        *, resume: Path | None = None, observer: Callable[[int, torch.nn.Module], None] | None = None) -> None:
    """Fit detector ``det`` (see :meth:`costfilter.api.Detector.fit`): select the normal fit
    images, screen them, run the method's fit step, set thresholds and the state's fit facts."""
    if det.method.fit is None:
        raise CostfilterError(f"method {det.config.method!r} needs no fit: run predict or test directly")
    train = [s for s in split_of(resolve_data(data, fmt, categories), "train") if s.label == 0]
    if not train:
        raise CostfilterError("no normal training images to fit on")
    if det.config.shots is not None:
        train = few_shot(train, det.config.shots, det.config.seed)
    hashes, all_train = distinct_hashes(train), train
    t0 = time.perf_counter()
    job, cal_paths = fit_job(det, train, resume=resume, observer=observer)
    found = None
    if not job.leave_one_out:  # trained methods, strict holdouts: a memory-bank pass scores the fit images
        found = screen_by_memory(det, train)
        train = without(train, found.removed)
        job, cal_paths = fit_job(det, train, resume=resume, observer=observer)
    result = det.method.fit(job)
    if job.leave_one_out and result.calibration is not None:
        sc = det.config.screening
        found = screen([str(x.path) for x in job.samples], result.calibration[0], sc.contamination, sc.outlier_k)
        if found.removed:  # fit again without them: the bank and every threshold change
            train = without(train, found.removed)
            det.model = det.build_model()
            job, cal_paths = fit_job(det, train)
            result = det.method.fit(job)
        owners = {str(x.path): i for i, x in enumerate(job.samples)}
        for f in found.flagged:
            f.owner = owners.get(f.path)
    det.config = result.config or job.config
    timings = job.timings
    calibrate_fit(det, result, job, cal_paths)
    timings["fit_total_s"] = time.perf_counter() - t0
    s = det.state
    s.categories, s.class_names = categories_of(train), result.class_names
    s.n_train_images, s.n_bank_images = len(train), len(job.samples)
    s.n_calibration_images = len(cal_paths) or len(job.samples)
    s.bank_size, s.timings, s.training = result.bank_size, timings, result.training
    s.reconstruction_loss = result.reconstruction_loss
    s.created = datetime.now(UTC).isoformat(timespec="seconds")
    s.training_hashes = [h[:16] for h in hashes]  # every image given, removed ones too: all were seen
    kept = {str(x.path) for x in train}
    s.training_data = inputs_digest([x.path for x in train],
                                    [h for x, h in zip(all_train, hashes) if str(x.path) in kept])
    s.screening = found.to_dict() if found is not None else None
    source = weights_source(dataclasses.asdict(det.config.features))
    s.weights_sha256 = weights_digest(source) if source else None
    s.environment = {"versions": environment()["versions"], "cpu_count": os.cpu_count()}


def few_shot(train: list[Sample], shots: int, seed: int) -> list[Sample]:
    """``shots`` normal images per category of ``train``, drawn with ``seed`` (in their order)."""
    out: list[Sample] = []
    for category in dict.fromkeys(s.category for s in train):
        pool = [s for s in train if s.category == category]
        if shots > len(pool):
            raise CostfilterError(f"shots {shots}: category {category or '(none)'!r} has only {len(pool)} normal "
                                  "training images")
        pick = np.random.default_rng(seed).choice(len(pool), shots, replace=False)
        out += [pool[i] for i in sorted(pick.tolist())]
    return out


def screen_by_memory(det: Detector, train: list[Sample]) -> Screening:
    """Screen ``train`` with the leave-one-out scores of a memory bank on the same features
    (for methods that do not score their fit images leave-one-out themselves)."""
    cfg = DetectorConfig(method="memory", features=dataclasses.replace(det.config.features),
                         memory=dataclasses.replace(det.config.memory),
                         scoring=dataclasses.replace(det.config.scoring),
                         tiling=dataclasses.replace(det.config.tiling), seed=det.config.seed,
                         batch_size=det.config.batch_size)
    cfg.calibration.holdout_fraction = 0.0
    probe = type(det)(cfg, progress=det.progress, device=str(det.compute.device),
                      precision=det.compute.precision).fit(train)
    sc = det.config.screening
    return screen([str(x.path) for x in train], probe.state.calibration_scores, sc.contamination, sc.outlier_k,
                  scores_from="a memory bank on the same features, leave-one-out")


def flagged_predictions(det: Detector) -> list[Prediction]:
    """The flagged training images scored by this model, each without its own bank rows where
    it is in a memory bank (so its defect shows as a new part's would)."""
    flagged = [FlaggedImage(**f) for f in (det.state.screening or {}).get("flagged", [])]
    if not flagged or det.inputs.tiled:
        return [p for f in flagged for p in det.predict([Path(f.path)])] if flagged else []
    owner_of = {f.path: f.owner for f in flagged}
    t = det.require_fitted()
    out = []
    for batch in det.inputs.batches([Path(f.path) for f in flagged], "draw flagged"):
        owners = [owner_of[str(p)] for p in batch.paths]
        exclude = torch.tensor([-1 if o is None else o for o in owners], device="cpu")
        args = (exclude,) if any(o is not None for o in owners) else ()  # only a memory bank knows owners
        with torch.inference_mode():
            maps, scores = det.model(batch.images, *args)
            maps, scores = maps.float().cpu(), scores.float().cpu()
        for p, size, m, sc in zip(batch.paths, batch.sizes, maps, scores.tolist()):
            out.append(decided_prediction(str(p), size, m, sc, t))
    return out


def extend(det: Detector, data: Sequence[Sample] | str | Path, fmt: str = "mvtec",
           categories: Sequence[str] | None = None, *, name: str | None = None) -> None:
    """Add the normal ``train`` images of ``data`` to fitted ``det`` as a new learned category
    (see :meth:`costfilter.api.Detector.extend`)."""
    t = det.require_fitted()
    if det.method.extend is None:
        raise CostfilterError(f"method {det.config.method!r} cannot add a category to a fitted model; "
                              "fit all categories together")
    if det.inputs.tiled:
        raise CostfilterError("a tiled model cannot add a category yet; fit all categories together")
    train = [s for s in split_of(resolve_data(data, fmt, categories), "train") if s.label == 0]
    if not train:
        raise CostfilterError("no normal training images to add")
    hashes = distinct_hashes(train)
    new_categories = categories_of(train)
    name = name or "+".join(new_categories)
    st = det.state
    first = "+".join(st.categories) or "category 1"
    if name in (det.learned or [first]):
        raise CostfilterError(f"the model already learned a category named {name!r}: pass another name")
    if not st.learned:  # the model as fitted so far becomes the first learned category
        st.learned = [LearnedCategory(first, t, st.n_train_images, st.n_calibration_images, st.bank_size or 0,
                                      st.calibration_scores, st.operating_points, st.training_data, st.created,
                                      st.training)]
    job, cal_paths = fit_job(det, train)
    t0 = time.perf_counter()
    result = det.method.extend(job)
    st.training_hashes = st.training_hashes + [h[:16] for h in hashes]
    st.learned.append(LearnedCategory(name, t, len(train), 0, result.bank_size or 0,
                                      training_data=inputs_digest([x.path for x in train], hashes),
                                      created=datetime.now(UTC).isoformat(timespec="seconds"),
                                      training=result.training))
    calibrate_fit(det, result, job, cal_paths, category=name)
    job.timings["fit_total_s"] = time.perf_counter() - t0
    st.categories = st.categories + [c for c in new_categories if c not in st.categories]
    st.n_train_images += len(train)
    st.bank_size = (st.bank_size or 0) + (result.bank_size or 0)
    st.timings.update({f"continue_{k}": v for k, v in job.timings.items()})  # the latest addition's


def fit_job(det: Detector, train: list[Sample], resume: Path | None = None,
             observer: Callable[[int, torch.nn.Module], None] | None = None) -> tuple[FitJob, list[Path]]:
    """The fit step's job for normal ``train`` samples (a seeded part held out where the
    method or config asks), and the held-out paths (empty: leave-one-out, or fit images)."""
    cfg = det.config
    holdout = cfg.calibration.holdout_fraction
    fit_idx, cal_idx = holdout_split(len(train), det.method.default_holdout if holdout is None else holdout, cfg.seed)
    fit_samples = [train[i] for i in fit_idx]
    fit_paths = [s.path for s in fit_samples]
    cal_paths = [train[i].path for i in cal_idx]
    loo = not cal_paths and not det.method.trains and len(fit_samples) >= 2
    job = FitJob(det.model, cfg, fit_samples, cal_paths or ([] if loo else fit_paths), det.inputs,
                 leave_one_out=loo, resume=resume, observer=observer, compute=det.compute)
    return job, cal_paths


def calibrate_fit(det: Detector, result: FitResult, job: FitJob, cal_paths: list[Path], category: str | None = None) -> None:
    """Thresholds after a fit step: from its leave-one-out scores, else from the held-out
    images (or the fit images themselves when none were held out)."""
    if result.calibration is not None:
        set_thresholds(det, category_index(det.learned, category), *result.calibration, det.config.calibration,
                       "leave-one-out")
        return
    t0 = time.perf_counter()
    det.calibrate(cal_paths or [s.path for s in job.samples], source="holdout" if cal_paths else "fit",
                  desc="calibrate" if cal_paths else "calibrate on fit images", category=category)
    job.timings["calibration_s"] = time.perf_counter() - t0


def without(samples: list[Sample], paths: Sequence[str]) -> list[Sample]:
    """``samples`` less those whose path is in ``paths`` (the images screening left out)."""
    gone = set(paths)
    return [x for x in samples if str(x.path) not in gone]


def teach_refusal(det: Detector) -> str | None:
    """Why fitted ``det`` cannot be taught new good images (None: it can)."""
    if det.method.teach is None:
        return f"method {det.config.method!r} cannot be taught new good images; refit it with them"
    if det.inputs.tiled:
        return "a tiled model cannot be taught new good images yet; refit it with them"
    if det.learned:
        return "this model learned several categories; teaching one of them is not supported yet"
    return None


def teach(det: Detector, images: Sequence[Path], *, who: str | None = None, recalibrate: bool = True
          ) -> dict[str, Any]:
    """Append confirmed-good ``images`` to fitted ``det`` within its category (see
    :meth:`costfilter.api.Detector.teach`) and re-calibrate every threshold on the earlier
    calibration images plus these, each scored leave-one-out (``recalibrate`` False: the
    thresholds stay as they are). Returns what changed."""
    t = det.require_fitted()
    refusal = teach_refusal(det)
    if refusal is not None:
        raise CostfilterError(refusal)
    if not images:
        raise CostfilterError("no good images to teach")
    st = det.state
    hashes = [file_sha256(p) for p in images]
    known = set(st.training_hashes)
    new = [(p, h) for p, h in zip(images, hashes) if h[:16] not in known]
    if not new:
        raise CostfilterError(f"the model already holds all {len(images)} images")
    paths = [p for p, _ in new]
    job = FitJob(det.model, det.config, [Sample(p, "train", 0, (st.categories or [""])[0]) for p in paths], [],
                 det.inputs, compute=det.compute)
    t0 = time.perf_counter()
    result = det.method.teach(job)
    assert result.calibration is not None
    scores, peaks, typical = result.calibration
    # The earlier calibration images keep their stored scores: rows were only added, so their
    # leave-one-out distances can only have fallen, and these scores bound them from above.
    old_peaks, old_typical = st.calibration_peaks, st.calibration_typical
    target = next((p.target_false_reject for p in st.operating_points if p.name == "chosen"), None)
    fixed = next((p.threshold for p in st.operating_points if p.name == "fixed"), None)
    before = dataclasses.replace(t)
    if recalibrate:
        set_thresholds(det, None, st.calibration_scores + scores, (old_peaks or []) + peaks,
                       (old_typical or []) + typical, det.config.calibration, t.source)
        if not old_peaks:  # fitted before peaks were kept: the earlier pixel threshold and limit stand
            assert det.thresholds is not None
            ood = None if t.ood_limit is None else max(t.ood_limit, det.thresholds.ood_limit or t.ood_limit)
            det.thresholds = dataclasses.replace(det.thresholds, pixel=max(before.pixel, det.thresholds.pixel),
                                                 ood_limit=ood)
        if fixed is not None or (target is not None and target != det.config.calibration.false_reject_rate):
            det.set_operating_point(None if fixed is not None else target, fixed)
    st.training_hashes = st.training_hashes + [h[:16] for _, h in new]
    st.n_train_images += len(new)
    st.n_bank_images += len(new)
    st.n_calibration_images = len(st.calibration_scores)
    st.bank_size = (st.bank_size or 0) + (result.bank_size or 0)
    step = {"images": len(new), "rows": result.bank_size, "by": who, "seconds": round(time.perf_counter() - t0, 3),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "data": inputs_digest(paths, [h for _, h in new])}
    st.taught = st.taught + [step]
    assert det.thresholds is not None
    return {"images": len(new), "skipped": len(images) - len(new), "rows": result.bank_size,
            "image_threshold": [before.image, det.thresholds.image],
            "pixel_threshold": [before.pixel, det.thresholds.pixel]}
