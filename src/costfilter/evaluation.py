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
from .metrics import image_metrics
from .metrics.pimo import AupimoAccumulator
from .metrics.streaming import PixelMetrics
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
        # Pixel metrics stream: each batch's maps (at ``size``) go into a sortable key per pixel
        # and are dropped, so memory is 8 bytes a pixel whatever the map count.
        pixels = PixelMetrics(n_pixels=len(items) * size * size) if with_masks else None
        pimo = AupimoAccumulator(normal_pixels=len(items) * size * size) if with_masks else None
        scores: list[float] = []
        kept_maps: list[np.ndarray] = []
        kept_masks: list[np.ndarray] = []
        for _, hw, batch_maps, sc in det.scored([s.path for s in items], f"test {cat}"):
            if pixels is not None:
                done = len(scores)
                maps = np.stack([map_at(m, size) for m in batch_maps])
                masks = np.stack([mask_at(s.mask, shape, size, mask_threshold)
                                  for s, shape in zip(items[done : done + len(sc)], hw)])
                pixels.add(maps, masks)
                assert pimo is not None
                pimo.add(maps, masks)
                if keep_maps:
                    kept_maps.append(maps)
                    kept_masks.append(masks)
            scores += sc
        labels = [s.label for s in items]
        records += [SampleResult(str(s.path), cat, s.defect, s.label, sc) for s, sc in zip(items, scores)]
        metrics = image_metrics(scores, labels) if len(set(labels)) == 2 else {}
        if pixels is not None:
            metrics.update(pixels.result())
            assert pimo is not None
            found = pimo.result().mean
            if found == found:  # undefined (too few normal pixels for its 1e-5 bound): left out
                metrics["aupimo"] = found
            if keep_maps:
                ev.maps[cat], ev.masks[cat] = np.concatenate(kept_maps), np.concatenate(kept_masks)
        metrics["n_test"] = len(items)
        metrics["n_anomalous"] = int(sum(labels))
        per_cat[cat] = metrics
    ev.seconds = time.perf_counter() - t0
    ev.images_per_second = len(test) / ev.seconds
    keys = sorted({k for m in per_cat.values() for k in m if not k.startswith("n_")})
    ev.mean = {k: float(np.mean([m[k] for m in per_cat.values() if k in m])) for k in keys}
    return ev


def map_at(amap: torch.Tensor, size: int) -> np.ndarray:
    """A map as float32 ``(size, size)`` (bilinear), the resolution pixel metrics compare at."""
    if amap.shape != (size, size):
        amap = F.interpolate(amap[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return amap.numpy().astype(np.float32)
