"""Throughput of a fitted model and of its backbone alone, measured the same way by ``costfilter
doctor`` and by every benchmark (the backbone-alone figure is the yardstick speed targets use)."""

from __future__ import annotations

import time
from typing import Any

import torch


def _rate(fn: Any, images: torch.Tensor, batch: int, repeats: int = 1) -> float:
    with torch.inference_mode():
        fn(images[:batch])  # warm-up: first-call allocations and kernel selection
        t0 = time.perf_counter()
        n = 0
        for _ in range(repeats):
            for i in range(0, len(images), batch):
                fn(images[i : i + batch])
                n += len(images[i : i + batch])
    return n / (time.perf_counter() - t0)


def throughput(det: Any, images: torch.Tensor, batch: int = 32, latency_images: int = 32) -> dict[str, float]:
    """Images/s of the whole model and of the backbone alone at ``batch``, and batch-1 latency (ms)."""
    model = det.model
    backbone_rate = backbone_images_per_s(det, images, batch)
    model_rate = _rate(model, images, batch)
    lat = images[:latency_images]
    latency_ms = 1000.0 / _rate(model, lat, 1)
    backbone_latency_ms = 1000.0 / _rate(lambda x: model.features.backbone(model.features.normalise(x)), lat, 1)
    return {
        "batch": batch,
        "model_images_per_s": model_rate,
        "backbone_images_per_s": backbone_rate,
        "model_over_backbone": model_rate / backbone_rate,
        "latency_batch1_ms": latency_ms,
        "backbone_latency_batch1_ms": backbone_latency_ms,
        "n_images": len(images),
    }


def backbone_images_per_s(det: Any, images: torch.Tensor, batch: int = 32) -> float:
    """Images/s of ``det``'s backbone alone on ``(N, 3, S, S)`` uint8 ``images`` at ``batch``."""
    features = det.model.features
    return _rate(lambda x: features.backbone(features.normalise(x)), images, batch)
