"""Every method on one masked set, on a GPU and on the CPU, compared (issue 28).

    python -m benchmarks.gpu_check --data ROOT/battery_weld/welding [--device cuda] [--json …]

Per method: fit and test once with ``--device cuda`` and once on the CPU (same seed, same
config), and the GPU-fitted model is also scored on the CPU. Tolerances, checked and written
into the JSON:

* the same fitted model scored on the two devices (memory bank and zero-shot: also fitted on
  each): image scores within 1e-3 relative, every decision the same. TF32 is off, so the GPU
  multiplies in float32 as the CPU does; what is left is summation order.
* a trained method (DFM, CostFilter-AD) trained on each device: the training sees the same data
  but its float rounding differs from the first step, so its weights differ; the test metrics
  must agree within 0.03 (I-AUROC, P-AP, AUPRO).

Trained methods use short runs here (``--steps``): the point is the device, not the accuracy.
The whole check is sized for under 8 minutes on the lent GPU machine (16 cores for the CPU side).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from costfilter import Detector
from costfilter.config import DetectorConfig
from costfilter.data import load_dataset, split_of

from .common import write_json

METHODS = ("memory", "dfm", "costfilter", "zeroshot")
SCORE_RTOL = 1e-3
METRIC_ATOL = 0.03


def _config(method: str, steps: int, image_size: int) -> DetectorConfig:
    cfg = DetectorConfig(method=method)
    cfg.features.image_size = image_size
    if method == "dfm":
        cfg.dfm.training.steps = steps
    if method == "costfilter":
        cfg.costfilter.training.steps = steps
    return cfg


def _run(method: str, samples: list[Any], device: str, steps: int, image_size: int) -> tuple[Detector, dict[str, Any]]:
    det = Detector(_config(method, steps, image_size), progress=False, device=device)
    t0 = time.perf_counter()
    if method != "zeroshot":
        det.fit(samples)
    fit_s = time.perf_counter() - t0
    ev = det.evaluate(samples)
    cat = next(iter(ev.per_category))
    facts = {"fit_s": fit_s, "test_s": ev.seconds, "images_per_s": ev.images_per_second,
             "metrics": {k: ev.per_category[cat].get(k) for k in ("image_auroc", "pixel_ap", "aupro")}}
    if det.state.training is not None:
        facts["steps"] = det.state.training.steps
        facts["steps_per_s"] = det.state.training.steps / max(det.state.timings.get("train_s", 0.0), 1e-9)
    return det, facts


def _agreement(a: Detector, b: Detector, paths: list[Path]) -> dict[str, Any]:
    pa, pb = a.predict(paths), b.predict(paths)
    sa, sb = np.array([p.score for p in pa]), np.array([p.score for p in pb])
    rel = float(np.max(np.abs(sa - sb) / np.maximum(np.abs(sb), 1e-12)))
    same = float(np.mean([x.decision == y.decision for x, y in zip(pa, pb)]))
    return {"max_score_rel_diff": rel, "decision_agreement": same, "ok": rel <= SCORE_RTOL and same == 1.0}


def run(data: Path, device: str, steps: int, image_size: int, methods: tuple[str, ...]) -> dict[str, Any]:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    samples = load_dataset(data)
    paths = [s.path for s in split_of(samples, "test")]
    out: dict[str, Any] = {"benchmark": "gpu_check", "data": str(data), "device": device, "steps": steps,
                           "image_size": image_size, "tolerance": {"score_rtol": SCORE_RTOL, "metric_atol": METRIC_ATOL},
                           "methods": {}}
    t_all = time.perf_counter()
    for method in methods:
        gpu, on_gpu = _run(method, samples, device, steps, image_size)
        cpu, on_cpu = _run(method, samples, "cpu", steps, image_size)
        row: dict[str, Any] = {"gpu": on_gpu, "cpu": on_cpu}
        if method == "zeroshot":
            row["same_model"] = _agreement(gpu, cpu, paths)
        else:
            row["same_model"] = _agreement(gpu, _on_cpu(gpu), paths)
            if method == "memory":
                row["fitted_apart"] = _agreement(gpu, cpu, paths)
        diffs = {k: abs((on_gpu["metrics"][k] or 0.0) - (on_cpu["metrics"][k] or 0.0)) for k in on_gpu["metrics"]}
        row["metric_diff"] = diffs
        row["ok"] = row["same_model"]["ok"] and row.get("fitted_apart", {"ok": True})["ok"] and all(
            d <= METRIC_ATOL for d in diffs.values())
        out["methods"][method] = row
        print(f"{method}: GPU fit {on_gpu['fit_s']:.1f} s, test {on_gpu['images_per_s']:.1f} img/s | CPU fit "
              f"{on_cpu['fit_s']:.1f} s, test {on_cpu['images_per_s']:.1f} img/s | same model rel "
              f"{row['same_model']['max_score_rel_diff']:.1e} | {'ok' if row['ok'] else 'FAILED'}", flush=True)
    out["seconds"] = time.perf_counter() - t_all
    out["ok"] = all(r["ok"] for r in out["methods"].values())
    out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return out  # write_json adds the environment


def _on_cpu(det: Detector) -> Detector:
    """``det`` saved and opened again on the CPU: the same model, through its checkpoint."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        det.save(Path(tmp) / "model.ckpt")
        return Detector.load(Path(tmp) / "model.ckpt", progress=False, device="cpu")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/battery_weld/welding"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--method", action="append", choices=METHODS, default=None)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    a = ap.parse_args()
    result = run(a.data, a.device, a.steps, a.image_size, tuple(a.method or METHODS))
    write_json(a.json, result, force=True)
    print(f"{'all within tolerance' if result['ok'] else 'OUTSIDE TOLERANCE'}; {result['seconds']:.0f} s; "
          f"wrote {a.json}")
    raise SystemExit(0 if result["ok"] else 1)
