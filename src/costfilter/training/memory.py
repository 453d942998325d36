"""Fitting a memory bank: stream the fit images' features, select the bank (greedy coreset),
and score every fit image leave-one-out for calibration. DFM and CostFilter-AD's embedding base
build their banks here too."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from ..bases.memory_bank import Patches, bank_size, collect_patches, select_bank
from ..data.imageio import read_image
from ..data.loader import iter_batches
from ..inputs import Inputs
from ..methods.base import FitJob, FitResult
from ..scoring import typical_patch_score
from ..tiling import score_tiled

if TYPE_CHECKING:
    from ..features import FeatureExtractor
    from ..methods.memory import MemoryBankModel

#: Fit features kept in float16 for leave-one-out calibration up to this size (ELPV: 330 MB);
#: past it the fit images go through the backbone a second time instead.
FEATURE_CACHE_BYTES = 1 << 30


class BankBuild(NamedTuple):
    """A built bank ``(K, C)``; each row's source image ``(K,)`` (``row_owner[i]`` is the image of
    input row ``i`` when rows are tiles); the collected patches, whose float16 copy of every
    feature map is kept when asked and it fits :data:`FEATURE_CACHE_BYTES`; and each row's patch
    id ``(K,)`` in the input rows (``row · h · w + y · w + x``), to embed the bank again."""

    bank: torch.Tensor
    owners: torch.Tensor
    patches: Patches
    ids: torch.Tensor


def build_bank(features: FeatureExtractor, images: Sequence[Path] | torch.Tensor, job: FitJob,
               row_owner: np.ndarray | None = None, keep_features: bool = False) -> BankBuild:
    """Stream features of ``images`` (files or decoded rows) and select the memory bank."""
    cfg, inputs = job.config, job.inputs
    t0 = time.perf_counter()
    n_patches = len(images) * features.grid ** 2
    patches = collect_patches(inputs.features(features, images, "features"), n_patches, cfg.memory, cfg.seed,
                              FEATURE_CACHE_BYTES if keep_features else 0)
    job.timings["features_s"] = time.perf_counter() - t0
    with inputs.bar(total=bank_size(n_patches, cfg.memory), desc=f"coreset ({cfg.memory.sampler})",
                    unit="centre") as bar:
        bank, ids = select_bank(patches, cfg.memory, cfg.seed, on_selected=bar.update)
    owners = torch.div(ids, patches.per_image, rounding_mode="floor")
    if row_owner is not None:
        owners = torch.from_numpy(np.asarray(row_owner))[owners]
    job.timings["coreset_s"] = time.perf_counter() - t0 - job.timings["features_s"]
    return BankBuild(bank, owners, patches, ids)


def leave_one_out(model: MemoryBankModel, paths: Sequence[Path], patches: Patches | None, inputs: Inputs,
                  category: int | None = None) -> tuple[list[float], list[float], list[float]]:
    """Scores, map peaks and typical-patch scores of every fit image against the bank without
    its own rows: a holdout's honesty with every image in the bank. ``category``: score against
    that learned category's rows only (continual learning)."""

    def score(feats: torch.Tensor, exclude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if category is None:
            return model.score_features(feats, exclude)
        return model.score_routed(feats, exclude, torch.full((len(feats),), category))[:2]

    scores: list[float] = []
    maps: list[torch.Tensor] = []
    bs, config = inputs.config.batch_size, inputs.config
    with inputs.bar(total=len(paths), desc="calibrate (leave-one-out)", unit="img") as bar, torch.inference_mode():
        if inputs.tiled:
            t, top = config.tiling, config.scoring.top_percent
            for i, path in enumerate(paths):
                amap, score = score_tiled(read_image(path), t.size, t.overlap, top,
                                          lambda tiles, i=i: inputs.run_tiles(model, tiles, exclude=i),
                                          chunk=inputs.batch_size)
                maps.append(amap)
                scores.append(score)
                bar.update()
        elif patches is not None and patches.cache is not None:
            for i in range(0, len(paths), bs):
                feats = patches.cache[i : i + bs].float()
                m, sc = score(feats, torch.arange(i, i + len(feats)))
                maps += list(m)
                scores += sc.tolist()
                bar.update(len(feats))
        else:
            start = 0
            for batch in iter_batches(paths, inputs.size, bs):
                n = len(batch.paths)
                m, sc = score(model.features(batch.images), torch.arange(start, start + n))
                maps += list(m)
                scores += sc.tolist()
                start += n
                bar.update(n)
    peaks = [float(m.max()) for m in maps]
    typical = [float(typical_patch_score(m[None])) for m in maps]
    return scores, peaks, typical


def fit_memory(job: FitJob) -> FitResult:
    """The memory bank's fit step: every fit image into the bank, then (``job.leave_one_out``)
    each scored against the bank without its own rows, for the thresholds."""
    model, inputs = job.model, job.inputs
    paths = [s.path for s in job.samples]
    source, row_owner = inputs.load(paths, "load fit tiles") if inputs.tiled else (paths, None)
    bank, owners, patches, _ = build_bank(model.features, source, job, row_owner, keep_features=job.leave_one_out)
    model.set_bank(bank, owners)
    calibration = None
    if job.leave_one_out:
        t0 = time.perf_counter()
        calibration = leave_one_out(model, paths, patches, inputs)
        job.timings["calibration_s"] = time.perf_counter() - t0
    return FitResult(calibration=calibration, bank_size=len(bank))


def continue_memory(job: FitJob) -> FitResult:
    """Continual learning: the new category's coreset, selected from its images alone, appended
    after the earlier categories' rows, which stay as they are; its fit images then scored
    leave-one-out against its own rows, for its thresholds."""
    model, inputs = job.model, job.inputs
    old = model.memory
    paths = [s.path for s in job.samples]
    bank, owners, patches, _ = build_bank(model.features, paths, job, keep_features=True)
    model.set_bank(torch.cat([old.bank, bank]), torch.cat([old.owners, owners.to(old.owners.dtype)]))
    new = model.router.add(len(old.bank), len(model.memory.bank))
    t0 = time.perf_counter()
    calibration = leave_one_out(model, paths, patches, inputs, category=new)
    job.timings["calibration_s"] = time.perf_counter() - t0
    return FitResult(calibration=calibration, bank_size=len(bank))
