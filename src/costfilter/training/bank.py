"""The bank builder every memory-based method shares: stream the fit images' features and select
the bank (greedy coreset). The memory bank, DFM and CostFilter-AD's embedding base build theirs here,
and grow them here when they are taught confirmed-good images."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from ..bank.memory_bank import Patches, bank_size, collect_patches, select_bank
from .job import FitJob

if TYPE_CHECKING:
    from ..features import FeatureExtractor

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
        bank, ids = select_bank(patches, cfg.memory, cfg.seed, on_selected=bar.update, device=job.compute.device)
    owners = torch.div(ids, patches.per_image, rounding_mode="floor")
    if row_owner is not None:
        owners = torch.from_numpy(np.asarray(row_owner)).to(owners.device)[owners]
    job.timings["coreset_s"] = time.perf_counter() - t0 - job.timings["features_s"]
    return BankBuild(bank, owners, patches, ids)


def grow_bank(feats: torch.Tensor, bank: torch.Tensor, start: torch.Tensor, seed: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Teaching's rows: the patches of ``feats`` ``(B, C, h, w)`` that a fitted ``bank``
    ``(K, C)`` does not cover yet, by continuing the greedy k-centre coreset from it (``start``
    ``(B·h·w,)``: each patch's squared distance to the bank, by the method's own search) until
    every patch is as close to the bank as its fit patches are (:func:`~costfilter.bank.coreset.spacing`).
    Returns the rows to append ``(n, C)`` and the image of ``feats`` each came from ``(n,)``."""
    from ..bank.coreset import greedy_kcenter, spacing

    b, c, h, w = feats.shape
    rows = feats.permute(0, 2, 3, 1).reshape(-1, c)
    chosen = greedy_kcenter(rows, len(rows), seed, start=start, radius=spacing(bank))
    return rows[chosen], torch.div(chosen, h * w, rounding_mode="floor")
