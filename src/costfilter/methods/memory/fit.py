"""The memory bank's fit steps: every fit image into the bank (:func:`~costfilter.training.bank.build_bank`),
then each scored leave-one-out for calibration; continual learning appends a category's rows;
teaching appends confirmed-good images' rows within the category."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ...bank.memory_bank import Patches
from ...data.loader import iter_batches
from ...inputs import Inputs
from ...maps import typical_patch_score
from ...tiling import tiled_scores
from ...training.bank import build_bank, grow_bank
from ...training.job import FitJob, FitResult
from .model import MemoryBankModel


def leave_one_out(model: MemoryBankModel, paths: Sequence[Path], patches: Patches | None, inputs: Inputs,
                  category: int | None = None) -> tuple[list[float], list[float], list[float]]:
    """Scores, map peaks and typical-patch scores of every fit image against the bank without
    its own rows: a holdout's honesty with every image in the bank. ``category``: score against
    that learned category's rows only (continual learning)."""

    device = model.memory.bank.device

    def score(feats: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        exclude = torch.arange(start, start + len(feats), device=device)
        if category is None:
            m, sc = model.score_features(feats, exclude)
        else:
            m, sc = model.score_routed(feats, exclude, torch.full((len(feats),), category, device=device))[:2]
        return m.float().cpu(), sc.float().cpu()

    scores: list[float] = []
    maps: list[torch.Tensor] = []
    bs, config = inputs.config.batch_size, inputs.config
    with inputs.bar(total=len(paths), desc="calibrate (leave-one-out)", unit="img") as bar, torch.inference_mode():
        if inputs.tiled:
            for _, _, amap, score in tiled_scores(paths, config.tiling, config.scoring.top_percent, inputs.batch_size,
                                                  lambda i, tiles: inputs.run_tiles(model, tiles, exclude=i),
                                                  bar=bar):
                maps.append(amap)
                scores.append(score)
        elif patches is not None and patches.cache is not None:
            for i in range(0, len(paths), bs):
                feats = patches.cache[i : i + bs].to(device).float()
                m, sc = score(feats, i)
                maps += list(m)
                scores += sc.tolist()
                bar.update(len(feats))
        else:
            start = 0
            for batch in iter_batches(paths, inputs.size, bs):
                n = len(batch.paths)
                m, sc = score(model.features(batch.images), start)
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
    model.set_bank(torch.cat([old.bank, bank]), torch.cat([old.owners, owners.to(old.owners)]))
    new = model.router.add(len(old.bank), len(model.memory.bank))
    t0 = time.perf_counter()
    calibration = leave_one_out(model, paths, patches, inputs, category=new)
    job.timings["calibration_s"] = time.perf_counter() - t0
    return FitResult(calibration=calibration, bank_size=len(bank))


def teach_memory(job: FitJob) -> FitResult:
    """Confirmed-good images into a fitted bank, within its category: the k-centre coreset is
    continued from the bank as it is (each new patch starts at its distance to the bank), adding
    the new patches the bank does not cover until every one is as close to the bank as fit
    patches are (:func:`~costfilter.bank.coreset.spacing`); then each new image scored
    leave-one-out against the grown bank, for re-calibration.

    The earlier rows stay as they are, so no earlier fit image's nearest distance can grow."""
    model, inputs = job.model, job.inputs
    old = model.memory
    paths = [s.path for s in job.samples]
    t0 = time.perf_counter()
    with torch.inference_mode():
        feats = torch.cat([model.features(b.images) for b in inputs.batches(paths, "features")])
        start = old(feats).flatten().square()
    job.timings["features_s"] = time.perf_counter() - t0
    b = len(feats)
    first_owner = int(old.owners.max()) + 1 if len(old.owners) else 0
    added, image = grow_bank(feats, old.bank, start, job.config.seed)
    owners = (first_owner + image).to(old.owners)
    model.set_bank(torch.cat([old.bank, added]), torch.cat([old.owners, owners]))
    job.timings["coreset_s"] = time.perf_counter() - t0 - job.timings["features_s"]
    with torch.inference_mode():
        maps, scores = model.score_features(feats, first_owner + torch.arange(b, device=feats.device))
        maps, scores = maps.float().cpu(), scores.float().cpu()
    calibration = (scores.tolist(), [float(m.max()) for m in maps], [float(typical_patch_score(m[None])) for m in maps])
    return FitResult(calibration=calibration, bank_size=len(added))
