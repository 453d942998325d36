"""``costfilter fit ROOT --per-category``: one model per category, locally one after another or
as Ray tasks, each with its own CPU and memory reservation.

A category that fails (bad data, a task killed for memory) becomes a summary row with its error;
the others still finish. Every checkpoint is written atomically by its own task.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_text
from ..errors import CostfilterError
from ..provenance import file_sha256

#: the summary table's columns
SUMMARY_COLUMNS = ("category", "images", "fit_s", "image_threshold", "pixel_threshold", "false_reject_target",
                   "heldout_good", "heldout_false_reject", "checkpoint", "sha256", "error")


def fit_category(config: dict[str, Any], root: str, fmt: str, category: str, out_dir: str, *, threads: int = 0,
                 sign_key: str | None = None, force: bool = False) -> dict[str, Any]:
    """Fit one category of ``root`` with ``config`` (a :meth:`DetectorConfig.to_dict`), save it as
    ``out_dir/<category>.ckpt`` and score the category's good *test* images, which no fit step
    saw, for the held-out false-reject rate (reported only; nothing is chosen on it)."""
    import torch

    from ..api import Detector
    from ..config import DetectorConfig
    from ..data import load_dataset, split_of

    if threads:
        torch.set_num_threads(threads)
    row: dict[str, Any] = {"category": category}
    t0 = time.perf_counter()
    try:
        samples = load_dataset(root, fmt, [category])  # read once: the fit and the held-out check share it
        det = Detector(DetectorConfig.from_dict(config), progress=False).fit(samples)
        path = Path(out_dir) / f"{category}.ckpt"
        det.save(path, force=force, sign_key=sign_key)
        row["sha256"] = file_sha256(path)
        row["fit_s"] = round(time.perf_counter() - t0, 2)
        t = det.require_fitted()
        row.update(images=det.state.n_train_images, image_threshold=round(t.image, 6),
                   pixel_threshold=round(t.pixel, 6), false_reject_target=det.config.calibration.false_reject_rate,
                   checkpoint=path.name)
        good = [s.path for s in split_of(samples, "test") if s.label == 0]
        if good:
            rejected = sum(p.decision in ("reject", "unknown") for p in det.predict(good))
            row.update(heldout_good=len(good), heldout_false_reject=round(rejected / len(good), 4))
    except CostfilterError as exc:
        row.update(error=str(exc), fit_s=round(time.perf_counter() - t0, 2))
    return row


def fit_local(config: dict[str, Any], root: str, fmt: str, categories: Sequence[str], out_dir: str, *,
              sign_key: str | None, force: bool, done: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Fit every category here, one after another; ``done(row)`` after each."""
    rows = []
    for cat in categories:
        rows.append(fit_category(config, root, fmt, cat, out_dir, sign_key=sign_key, force=force))
        done(rows[-1])
    return rows


def fit_on_ray(config: dict[str, Any], root: str, fmt: str, categories: Sequence[str], out_dir: str, *,
               cpus_per_task: float, memory_gb: float | None, sign_key: str | None, force: bool,
               done: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Fit every category as a Ray task (Ray must be connected): ``cpus_per_task`` CPUs (also its
    torch threads) and, with ``memory_gb``, that much memory reserved. Ray schedules no more
    tasks on a node than its memory holds, and its memory monitor kills a task that outgrows the
    node; such a task becomes an error row. ``root`` and ``out_dir`` must be on a filesystem
    every node sees."""
    import ray

    options: dict[str, Any] = {"num_cpus": cpus_per_task, "max_retries": 0}
    if memory_gb:
        options["memory"] = int(memory_gb * 2**30)
    task = ray.remote(fit_category).options(**options)
    pending = {task.remote(config, root, fmt, cat, out_dir, threads=max(1, int(cpus_per_task)), sign_key=sign_key,
                           force=force): cat for cat in categories}
    rows = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        cat = pending.pop(ready[0])
        try:
            rows[cat] = ray.get(ready[0])
        except ray.exceptions.RayError as exc:  # killed for memory, a lost node, a crash
            lines = str(exc).strip().splitlines()
            rows[cat] = {"category": cat, "error": f"task failed: {lines[-1] if lines else type(exc).__name__}"}
        done(rows[cat])
    return [rows[c] for c in categories]


def write_summary(out_dir: Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> None:
    """``summary.csv`` (one row per category) and ``summary.json`` (rows and run facts)."""
    import csv
    import io
    import json

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS)
    w.writeheader()
    w.writerows({k: r.get(k) for k in SUMMARY_COLUMNS} for r in rows)
    write_text(out_dir / "summary.csv", buf.getvalue())
    write_text(out_dir / "summary.json", json.dumps(dict(meta, categories=list(rows)), indent=2) + "\n")
