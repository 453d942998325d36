"""Evaluating a detector on a labelled test split: image metrics per category always, pixel
metrics where every anomalous image has a mask, per-image records."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .data import Sample, categories_of, mask_at
from .metrics import image_metrics, pixel_metrics
from .results import Evaluation, SampleResult

#: one scored batch: names, source sizes ``(H, W)``, maps, scores
ScoredBatch = tuple[list[str], list[tuple[int, int]], list[torch.Tensor], list[float]]


class Scores(Protocol):
    """What evaluation needs of a detector."""

    zero_shot: bool
    seed: int

    def scored(self, source: Sequence[Path], desc: str) -> Iterator[ScoredBatch]: ...


def evaluate(det: Scores, test: list[Sample], size: int, mask_threshold: int = 0, keep_maps: bool = False
             ) -> Evaluation:
    """Metrics of ``det`` on ``test`` samples, per category and their mean. Maps are compared at
    ``size`` × ``size`` (bilinear) with masks resized there (nearest) and binarised as
    ``value > mask_threshold``."""
    per_cat: dict[str, dict[str, float]] = {}
    records: list[SampleResult] = []
    ev = Evaluation(per_cat, {}, records)
    t0 = time.perf_counter()
    for cat in categories_of(test):
        items = [s for s in test if s.category == cat]
        if det.zero_shot:
            # Batches are reference sets: shuffle so each mixes good and defective images.
            order = np.random.default_rng(det.seed).permutation(len(items))
            items = [items[i] for i in order]
        with_masks = all(s.mask is not None for s in items if s.label == 1) and any(s.label == 1 for s in items)
        scores: list[float] = []
        maps: list[np.ndarray] = []
        sizes: list[tuple[int, int]] = []
        for _, hw, batch_maps, sc in det.scored([s.path for s in items], f"test {cat}"):
            scores += sc
            sizes += hw
            if with_masks:
                for m in batch_maps:
                    if m.shape != (size, size):
                        m = F.interpolate(m[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
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
