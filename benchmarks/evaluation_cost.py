"""What ``costfilter test`` costs beyond scoring: the command as a user runs it, against scoring the
same images alone and the backbone alone, with its peak memory.

    python -m benchmarks.evaluation_cost [--category ../shared/data/magnetic_tile/magnetic_tile] [--before SRC] [--force]

Fits the default memory bank on the category (``costfilter fit``), then times ``costfilter test``
in a fresh process (wall time, peak RSS, the metrics it writes), scoring the test images without
metrics (decode, resize, model: the scoring loop ``test`` uses) and the backbone alone on the same
images, decoded once. ``--before SRC`` also runs the ``test`` command from another source tree
(e.g. a worktree of an earlier commit) on the same checkpoint, so the table shows what a change
moved, and its metrics are compared with today's. Writes benchmarks/results/evaluation_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from costfilter.api import Detector
from costfilter.data import load_dataset, split_of
from costfilter.speed import throughput
from costfilter.tables import format_table

from .common import load_tensors, write_json
from .probe_cases import run_cli


def cli_run(args: list[str], source: Path | None = None) -> dict[str, float]:
    """Run ``costfilter ARGS`` in a fresh process (from ``source``'s ``src`` when given) with the
    benchmarks' one CLI runner: its wall time and peak RSS; a failure raises with its output."""
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = str(Path(source) / "src")
    r = run_cli(args, env=env, timeout=3600)
    if r["rc"]:
        raise RuntimeError(f"costfilter {' '.join(args)} failed:\n{(r['stdout'] + r['stderr'])[-2000:]}")
    return {"wall_s": r["seconds"], "peak_rss_mb": r["peak_rss_mb"]}


def run_evaluation_cost(category: Path, json_out: Path, *, before: Path | None = None, force: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, metrics_json = Path(tmp) / "m.ckpt", Path(tmp) / "metrics.json"
        fit = cli_run(["fit", str(category), "--out", str(ckpt), "-q"])
        test = cli_run(["test", str(ckpt), str(category), "--json", str(metrics_json), "-q"])
        metrics = json.loads(metrics_json.read_text())["per_category"]
        old = None
        if before is not None:
            old_json = Path(tmp) / "before.json"
            old = cli_run(["test", str(ckpt), str(category), "--json", str(old_json), "-q"], source=before)
            old["metrics"] = json.loads(old_json.read_text())["per_category"]
        det = Detector.load(ckpt, progress=False)
        paths = [s.path for s in split_of(load_dataset(category), "test")]
        t0 = time.perf_counter()
        for _ in det.scored(paths, "score"):
            pass
        scoring_s = time.perf_counter() - t0
        speed = throughput(det, load_tensors(paths, det.config.features.image_size), batch=32, latency_images=8)
    backbone_s = len(paths) / speed["backbone_images_per_s"]
    payload: dict[str, Any] = {
        "benchmark": "evaluation_cost", "seed": 0, "category": str(category), "n_test_images": len(paths), "fit": fit,
        "test": test, "scoring_s": scoring_s, "backbone_s": backbone_s, "throughput": speed,
        "test_over_scoring": test["wall_s"] / scoring_s, "test_over_backbone": test["wall_s"] / backbone_s,
        "metrics": metrics, "before": old, "before_source": str(before) if before else None,
    }
    if old is not None:
        payload["largest_metric_change"] = max(abs(old["metrics"][c][k] - v) for c, m in metrics.items()
                                               for k, v in m.items() if isinstance(v, float))
    print(evaluation_cost_table(payload))
    write_json(json_out, payload, force)
    print(f"results: {json_out}")
    return payload


def evaluation_cost_table(r: dict[str, Any]) -> str:
    """Markdown: ``costfilter test`` now (and before), against scoring alone and the backbone alone."""
    rows = []
    for name, run in (("`costfilter test` (before)", r.get("before")), ("`costfilter test`", r["test"])):
        if run:
            rows.append([name, f"{run['wall_s']:.1f}", f"{run['wall_s'] / r['scoring_s']:.2f}×",
                         f"{run['wall_s'] / r['backbone_s']:.2f}×", f"{run['peak_rss_mb']:.0f}"])
    rows.append(["scoring alone (decode, resize, model)", f"{r['scoring_s']:.1f}", "1.00×",
                 f"{r['scoring_s'] / r['backbone_s']:.2f}×", "—"])
    rows.append(["backbone alone (decoded images)", f"{r['backbone_s']:.1f}", "—", "1.00×", "—"])
    head = [f"{Path(r['category']).name}, {r['n_test_images']} test images", "wall s", "× scoring",
            "× backbone", "peak RSS MB"]
    return format_table(head, rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--category", type=Path, default=Path("../shared/data/magnetic_tile/magnetic_tile"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/evaluation_cost.json"))
    ap.add_argument("--before", type=Path, default=None, help="source tree whose `test` is run as well")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run_evaluation_cost(a.category, a.json, before=a.before, force=a.force)
