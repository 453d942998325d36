"""Continual learning (issue 20): five tasks added one after another, forgetting measured.

    python -m benchmarks.continual [--data ../shared/data] [--budget 90] [--force]

Tasks in order: ELPV mono, ELPV poly, magnetic_tile, metal_plate, welding. Variants: the memory
bank appended, DFM fine-tuned without and with replay, and joint fits on all tasks. Writes benchmarks/results/continual.json.

Continual learning (issue 20): tasks arrive one after another and each is added to the model
with ``Detector.extend`` (``fit --continue``); after each task every task seen so far is
evaluated. Reports the final average and the forgetting (best minus final, per task) for the
memory bank appended, DFM fine-tuned without and with replay, and joint fits on all tasks (the
usual upper bound of continual learning: one model fitted on everything at once).

Each variant runs in its own child process. Nothing is chosen on test labels: the continual
path has no setting tuned here, DFM keeps the step its validation split (the new task's
held-out good images + synthetic anomalies) scores best.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from costfilter.config import DetectorConfig
from costfilter.tables import format_table

from .common import run_child, write_json

#: the issue's order: (task name, data, categories)
TASKS = [("ELPV mono", "elpv", ["mono"]), ("ELPV poly", "elpv", ["poly"]),
         ("magnetic_tile", "magnetic_tile/magnetic_tile", None), ("metal_plate", "mpdd/metal_plate", None),
         ("welding", "battery_weld/welding", None)]
#: variant → (method, mode, DFM replay share)
VARIANTS = {
    "memory bank, appended": ("memory", "sequential", 0.0),
    "DFM, fine-tuned without replay": ("dfm", "sequential", 0.0),
    "DFM, fine-tuned with replay": ("dfm", "sequential", None),
    "memory bank, joint fit on all tasks": ("memory", "joint", 0.0),
    "DFM, joint fit on all tasks": ("dfm", "joint", None),
}
METRICS = ("image_auroc", "pixel_auroc", "aupro")


class _Routed:
    """A detector seen by :func:`~costfilter.evaluation.evaluate`, recording which learned
    category each image was scored as."""

    zero_shot = False

    def __init__(self, det: Any):
        self.det, self.seed, self.routes = det, det.seed, []

    def scored(self, source: Sequence[Path], desc: str) -> Iterator[Any]:
        for names, sizes, maps, scores, cats in self.det.scored_routed(source, desc):
            self.routes += cats
            yield names, sizes, maps, scores


def _task_samples(root: Path, data: str, categories: list[str] | None) -> list[Any]:
    from costfilter.data import load_dataset

    from .common import load_samples

    if data == "elpv":
        return load_dataset("elpv", "elpv", categories)
    return load_samples([str(root / data)])


def continual_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Child: one variant over the tasks. ``spec``: ``config``, ``mode`` (``sequential`` /
    ``joint``), ``root``, ``tasks`` (name, data, categories), ``budget_s`` per task."""
    import time

    from costfilter.api import Detector
    from costfilter.data import split_of
    from costfilter.evaluation import evaluate

    cfg = DetectorConfig.from_dict(spec["config"])
    root = Path(spec["root"])
    tasks = [(name, _task_samples(root, data, cats)) for name, data, cats in spec["tasks"]]
    size = cfg.features.image_size

    def evaluate_seen(det: Any, seen: int, routed: bool) -> list[dict[str, Any]]:
        out = []
        for t, (name, samples) in enumerate(tasks[:seen]):
            view = _Routed(det)
            ev = evaluate(view, split_of(samples, "test"), size)
            row = {k: ev.mean.get(k) for k in METRICS} | {"n_test": len(view.routes), "test_s": ev.seconds}
            if routed:
                row["routed_right"] = float(np.mean(np.asarray(view.routes) == t))
            out.append(row)
        return out

    steps: list[dict[str, Any]] = []
    if spec["mode"] == "joint":
        train = [s for _, samples in tasks for s in split_of(samples, "train")]
        cfg.dfm.training.time_budget_s = spec["budget_s"] * len(tasks)
        t0 = time.perf_counter()
        det = Detector(cfg, progress=False).fit(train)
        steps.append({"task": "all", "fit_s": time.perf_counter() - t0, "results": evaluate_seen(det, len(tasks), False)})
    else:
        det = None
        for t, (name, samples) in enumerate(tasks):
            train = split_of(samples, "train")
            t0 = time.perf_counter()
            if det is None:
                det = Detector(cfg, progress=False).fit(train)
            else:
                det.extend(train, name=name)
            fit_s = time.perf_counter() - t0
            training = (det.state.learned[-1].training if det.state.learned else det.state.training)
            steps.append({"task": name, "fit_s": fit_s, "bank_rows": det.state.bank_size,
                          "best_step": training.best_step if training else None,
                          "train_steps": training.steps if training else None,
                          "results": evaluate_seen(det, t + 1, t > 0)})
    return {"steps": steps, "tasks": [name for name, _ in tasks]}


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    """Final average per metric, and forgetting: per task, its best image AUROC over the steps
    after it was learned minus its final one (averaged over all tasks but the last)."""
    steps, tasks = run["steps"], run["tasks"]
    final = steps[-1]["results"]
    out: dict[str, Any] = {f"final_{k}": _mean([r[k] for r in final]) for k in METRICS}
    if len(steps) > 1:
        forgetting = []
        for t in range(len(tasks) - 1):
            history = [s["results"][t]["image_auroc"] for s in steps[t:]]
            forgetting.append(max(history) - history[-1])
        out["forgetting_image_auroc"] = float(np.mean(forgetting))
        out["max_forgetting_image_auroc"] = float(np.max(forgetting))
        # Best-minus-final hides a drop that a later task happened to undo: the largest fall below
        # a task's own first figure at any later step, over all tasks.
        out["worst_drop_image_auroc"] = float(max(
            s["results"][t]["image_auroc"] - later["results"][t]["image_auroc"]
            for t, s in enumerate(steps) for later in steps[t:]))
        routed = [r["routed_right"] for s in steps[1:] for r in s["results"]]
        out["routed_right_min"] = float(np.min(routed))
    out["fit_s"] = float(sum(s["fit_s"] for s in steps))
    return out


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def run_continual(json_out: Path, root: Path, *, budget_s: float = 90.0, seed: int = 0,
                  variants: Sequence[str] = tuple(VARIANTS), force: bool = False) -> dict[str, Any]:
    """Every variant over the tasks; prints the tables and writes JSON."""
    runs: dict[str, Any] = {}
    for variant in variants:
        method, mode, share = VARIANTS[variant]
        cfg = DetectorConfig(method=method, seed=seed)
        cfg.dfm.training.steps, cfg.dfm.training.time_budget_s = 100000, budget_s
        if share is not None:
            cfg.dfm.replay_share = share
        r = run_child("continual", {"config": cfg.to_dict(), "mode": mode, "root": str(root), "tasks": TASKS,
                                    "budget_s": budget_s}, variant)
        runs[variant] = dict(r, summary=summarise(r), method=method, mode=mode,
                             replay_share=cfg.dfm.replay_share if method == "dfm" else None)
    payload = {"benchmark": "continual", "seed": seed, "budget_s": budget_s, "data_root": str(root),
               "tasks": [t[0] for t in TASKS], "replay_images": DetectorConfig().dfm.replay_images, "runs": runs}
    write_json(json_out, payload, force)
    print(continual_tables(payload))
    return payload


def continual_tables(p: dict[str, Any]) -> str:
    """The summary table, then image AUROC per task after each task."""
    return continual_table(p) + "\n\nImage AUROC of every task seen so far, after each task:\n\n" + continual_matrix(p)


def continual_table(p: dict[str, Any]) -> str:
    """README table: one row per variant (final averages, forgetting, routing, fit time)."""
    head = ["variant", "final I-AUROC", "final P-AUROC", "final AUPRO", "forgetting (mean / max)",
            "worst drop at any step", "routed right (worst task)", "fit s (all tasks)"]
    rows = []
    for variant, r in p["runs"].items():
        s = summarise(r)  # derived from the stored steps
        forgetting = (f"{s['forgetting_image_auroc']:.3f} / {s['max_forgetting_image_auroc']:.3f}"
                      if "forgetting_image_auroc" in s else "—")
        routed = f"{100 * s['routed_right_min']:.1f} %" if "routed_right_min" in s else "—"
        rows.append([variant, s["final_image_auroc"], s["final_pixel_auroc"], s["final_aupro"], forgetting,
                     s.get("worst_drop_image_auroc"), routed, f"{s['fit_s']:.0f}"])
    return format_table(head, rows) + (
        f"\n\nTasks in order: {', '.join(p['tasks'])}. Forgetting is image AUROC, best after a task was learned "
        f"minus final, averaged over the first {len(p['tasks']) - 1} tasks; the worst drop is a task's image AUROC "
        f"when it was learned minus its lowest after that. Routed right: the share of a task's test images scored "
        f"as that task, on the worst task and step. Pixel metrics average the three masked "
        f"sets. DFM trains {p['budget_s']:.0f} s per task (joint: that times the number of tasks) and keeps "
        f"{p['replay_images']} images per task for replay.")


def continual_matrix(p: dict[str, Any]) -> str:
    """Image AUROC of every seen task after each task, per sequential variant."""
    tasks = p["tasks"]
    head = ["variant", "after task", *tasks]
    rows = []
    for variant, r in p["runs"].items():
        if r["mode"] != "sequential":
            continue
        for s in r["steps"]:
            values = [f"{x['image_auroc']:.3f}" for x in s["results"]]
            rows.append([variant, s["task"], *values, *["—"] * (len(tasks) - len(values))])
    return format_table(head, rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/continual.json"))
    ap.add_argument("--budget", type=float, default=90.0, help="DFM training seconds per task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run_continual(a.json, a.data, budget_s=a.budget, seed=a.seed, force=a.force)
