"""ELPV, every method side by side with the same metrics, time and memory columns (issue 4):
memory bank, DFM (trained under a wall-clock budget) and zero-shot batch mutual scoring (no
fit: test images score each other in shuffled batches). Each method runs in its own process."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from ..config import DetectorConfig
from ..report import format_table, peak_rss_mb
from .common import run_child, write_json


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    from ..api import Detector
    from ..data import load_dataset
    from ..metrics import image_metrics

    cfg = DetectorConfig.from_dict(spec["config"])
    samples = load_dataset("elpv", "elpv")
    det = Detector(cfg, progress=False)
    t0 = time.perf_counter()
    if not det.zero_shot:
        det.fit(samples)
    fit_s = time.perf_counter() - t0
    rss_fit = peak_rss_mb()
    ev = det.evaluate(samples)
    pooled = image_metrics([r.score for r in ev.samples], [r.label for r in ev.samples])
    return {"method": cfg.method, "metrics": pooled, "per_type": ev.per_category, "fit_s": fit_s,
            "test_s": ev.seconds, "images_per_s": ev.images_per_second, "peak_rss_fit_mb": rss_fit,
            "peak_rss_mb": peak_rss_mb(), "training": det.state.get("training")}


def run_methods(json_out: Path, *, dfm_budget_s: float = 150.0, seed: int = 0, force: bool = False) -> dict[str, Any]:
    """Run each method on ELPV; print the table; write JSON."""
    rows = []
    for method in ("memory", "dfm", "zeroshot"):
        cfg = DetectorConfig(method=method, seed=seed)
        cfg.dfm.steps, cfg.dfm.time_budget_s = 100000, dfm_budget_s
        rows.append(run_child("costfilter.bench.methods", {"config": cfg.to_dict()}, method))
    payload = {"benchmark": "methods", "seed": seed, "dfm_budget_s": dfm_budget_s, "runs": rows}
    write_json(json_out, payload, force)
    print(methods_table(payload))
    return payload


def methods_table(p: dict[str, Any]) -> str:
    """One row per method on ELPV."""
    rows = []
    for r in p["runs"]:
        m, t = r["metrics"], r["per_type"]
        extra = ""
        if r["method"] == "dfm" and r.get("training"):
            tr = r["training"]
            extra = f" ({tr['steps']} steps, best {tr['best_step']}, τ {tr['temperature']:.2f})"
        rows.append([r["method"] + extra, m["image_auroc"], m["image_ap"], m["image_f1max"],
                     f"{t['mono']['image_auroc']:.3f} / {t['poly']['image_auroc']:.3f}",
                     f"{r['fit_s']:.0f}" if r["fit_s"] > 0.5 else "none", f"{r['images_per_s']:.1f}",
                     f"{r['peak_rss_mb']:.0f}"])
    return format_table(["method (ELPV)", "I-AUROC", "I-AP", "I-F1max", "I-AUROC mono / poly", "fit s",
                         "test images/s (with decoding)", "peak RSS MB"], rows)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        print(json.dumps(_child(json.loads(sys.argv[2]))))
