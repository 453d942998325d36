"""Pieces every benchmark shares: throughput of model vs backbone alone, JSON output."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..api import Detector
from ..atomic import check_writable, write_text
from ..data.loader import iter_batches
from ..report import environment


def load_tensors(paths: Sequence[Path], size: int) -> torch.Tensor:
    """Decode and resize images once, so throughput measures the model, not PNG decoding."""
    return torch.cat([b.images for b in iter_batches(list(paths), size, 64)])


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


def throughput(det: Detector, images: torch.Tensor, batch: int = 32, latency_images: int = 32) -> dict[str, float]:
    """Images/s of the whole model and of the backbone alone at ``batch``, and batch-1 latency (ms)."""
    model = det.model
    backbone_rate = _rate(lambda x: model.features.backbone(model.features.normalise(x)), images, batch)
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


def write_json(path: Path, payload: dict[str, Any], force: bool) -> None:
    """Add provenance and write ``payload`` atomically (benchmark results are regenerated, so
    an existing file is overwritten only with ``force`` or when it is one of ours)."""
    if path.exists() and not force:
        try:
            ours = json.loads(path.read_text()).get("benchmark") == payload.get("benchmark")
        except (OSError, ValueError):
            ours = False
        if not ours:
            check_writable(path, force)
    payload = dict(payload, environment=environment())
    write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def run_child(module: str, spec: dict[str, Any], tag: str) -> dict[str, Any]:
    """Run ``python -m module child SPEC`` in a fresh process (so its time and peak RSS are its
    own) and return the JSON it prints last; a failure raises with the child's stderr."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", module, "child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"benchmark child failed ({tag}):\n{proc.stderr[-3000:]}")
    print(f"  {tag}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])
