"""Every method side by side on ELPV (issue 4): memory bank, DFM, zero-shot.

    python -m benchmarks.methods [--dfm-budget 150] [--force]

Writes benchmarks/results/methods.json. CostFilter-AD's rows are in benchmarks/costfilter.py.

ELPV, every method side by side with the same metrics, time and memory columns (issue 4):
memory bank, DFM (trained under a wall-clock budget) and zero-shot batch mutual scoring (no
fit: test images score each other in shuffled batches). Each method runs in its own process.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from costfilter.config import DetectorConfig
from costfilter.tables import format_table

from .common import run_child, write_json


def run_methods(json_out: Path, *, dfm_budget_s: float = 150.0, seed: int = 0, force: bool = False) -> dict[str, Any]:
    """Run each method on ELPV; print the table; write JSON."""
    rows = []
    for method in ("memory", "dfm", "zeroshot"):
        cfg = DetectorConfig(method=method, seed=seed)
        cfg.dfm.training.steps, cfg.dfm.training.time_budget_s = 100000, dfm_budget_s
        r = run_child("fit_evaluate", {"config": cfg.to_dict(), "data": "elpv", "tag": method}, method)
        rows.append(dict(r, method=method, metrics=r["pooled_image"], per_type=r["per_category"]))
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
            tau = tr.get("chosen", {}).get("temperature", tr.get("temperature"))  # older files: top level
            extra = f" ({tr['steps']} steps, best {tr['best_step']}, τ {tau:.2f})"
        rows.append([r["method"] + extra, m["image_auroc"], m["image_ap"], m["image_f1max"],
                     f"{t['mono']['image_auroc']:.3f} / {t['poly']['image_auroc']:.3f}",
                     f"{r['fit_s']:.0f}" if r["fit_s"] > 0.5 else "none", f"{r['images_per_s']:.1f}",
                     f"{r['peak_rss_mb']:.0f}"])
    return format_table(["method (ELPV)", "I-AUROC", "I-AP", "I-F1max", "I-AUROC mono / poly", "fit s",
                         "test images/s (with decoding)", "peak RSS MB"], rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/methods.json"))
    ap.add_argument("--dfm-budget", type=float, default=150.0)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run_methods(a.json, dfm_budget_s=a.dfm_budget, force=a.force)
