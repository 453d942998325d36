"""``costfilter fit ROOT --per-category``: one model per category, locally one after another or
as Ray tasks, each with its own CPU and memory reservation.

On Ray the nodes need share no disk: the driver reads each category's images (and masks) and
sends them as bytes through Ray's object store; the task writes them into a private temporary
folder, fits, and returns the checkpoint as bytes, which the driver checks against the hash the
task computed and writes atomically. A task whose node is lost is run again elsewhere (Ray's
task retries); its checkpoint is still written once, by the driver.

A category that fails (bad data, a task killed for memory) becomes a summary row with its error;
the others still finish.
"""

from __future__ import annotations

import hashlib
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
    from ..data import load_dataset

    t0 = time.perf_counter()
    try:
        samples = load_dataset(root, fmt, [category])  # read once: the fit and the held-out check share it
    except CostfilterError as exc:
        return {"category": category, "error": str(exc), "fit_s": round(time.perf_counter() - t0, 2)}
    return _fit_samples(config, samples, category, Path(out_dir) / f"{category}.ckpt", t0, threads=threads,
                        sign_key=sign_key, force=force)


def _fit_samples(config: dict[str, Any], samples: list[Any], category: str, path: Path, t0: float, *,
                 threads: int = 0, sign_key: str | None = None, force: bool = False) -> dict[str, Any]:
    import torch

    from ..api import Detector
    from ..config import DetectorConfig
    from ..data import split_of

    if threads:
        torch.set_num_threads(threads)
    row: dict[str, Any] = {"category": category}
    try:
        det = Detector(DetectorConfig.from_dict(config), progress=False).fit(samples)
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


def pack_category(root: str, fmt: str, category: str) -> list[dict[str, Any]]:
    """One category's samples with their files' bytes, to send to a node that cannot see ``root``:
    each sample's fields, its image (and mask) named by its path under ``root``."""
    import dataclasses

    from ..data import load_dataset

    base = Path(root).resolve()

    def name(p: Path) -> str:
        p = Path(p).resolve()
        return str(p.relative_to(base)) if base in p.parents else f"_outside/{hashlib.sha256(str(p).encode()).hexdigest()[:16]}/{p.name}"

    out = []
    for smp in load_dataset(root, fmt, [category]):
        fields = dataclasses.asdict(smp)
        fields["path"], fields["image"] = name(smp.path), Path(smp.path).read_bytes()
        if smp.mask is not None:
            fields["mask"], fields["mask_bytes"] = name(smp.mask), Path(smp.mask).read_bytes()
        out.append(fields)
    return out


def fit_packed(config: dict[str, Any], packed: list[Any], category: str, *, threads: int = 0,
               sign_key: str | None = None) -> tuple[dict[str, Any], bytes | None]:
    """A Ray task: fit ``category`` from :func:`pack_category`'s samples (``packed``:
    ``[ObjectRef]``) written into a private temporary folder; returns the summary row and the
    checkpoint's bytes (None when the fit failed)."""
    import shutil
    import tempfile

    import ray

    from ..data.types import Sample

    t0 = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix=f"costfilter-fit-{category}-"))
    try:
        samples = []
        for fields in ray.get(packed[0]):
            fields = dict(fields)
            image, mask = folder / "data" / fields.pop("path"), fields.pop("mask")
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(fields.pop("image"))
            if mask is not None:
                (folder / "data" / mask).parent.mkdir(parents=True, exist_ok=True)
                (folder / "data" / mask).write_bytes(fields.pop("mask_bytes"))
            samples.append(Sample(path=image, mask=folder / "data" / mask if mask is not None else None, **fields))
        ckpt = folder / f"{category}.ckpt"
        row = _fit_samples(config, samples, category, ckpt, t0, threads=threads, sign_key=sign_key, force=True)
        return row, (ckpt.read_bytes() if ckpt.is_file() and not row.get("error") else None)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
               done: Callable[[dict[str, Any]], None], retries: int = 3) -> list[dict[str, Any]]:
    """Fit every category as a Ray task (Ray must be connected): ``cpus_per_task`` CPUs (also its
    torch threads) and, with ``memory_gb``, that much memory reserved. Ray schedules no more
    tasks on a node than its memory holds, and its memory monitor kills a task that outgrows the
    node. A task lost with its node (or killed for memory) is run again up to ``retries`` times
    (Ray's own task retries; an error in the data is not retried), then becomes an error row.
    The nodes need not see ``root`` or ``out_dir``: data and checkpoints travel as bytes."""
    import ray

    from ..atomic import write_bytes

    # Spread over the nodes: one lost node then costs as few fits as it can.
    options: dict[str, Any] = {"num_cpus": cpus_per_task, "max_retries": retries, "scheduling_strategy": "SPREAD"}
    if memory_gb:
        options["memory"] = int(memory_gb * 2**30)
    task = ray.remote(fit_packed).options(**options)
    pending, rows = {}, {}
    for cat in categories:
        try:
            packed = ray.put(pack_category(root, fmt, cat))
        except (CostfilterError, OSError) as exc:
            rows[cat] = {"category": cat, "error": str(exc) if isinstance(exc, CostfilterError)
                         else f"cannot read its images ({exc.strerror or exc})"}
            done(rows[cat])
            continue
        pending[task.remote(config, [packed], cat, threads=max(1, int(cpus_per_task)), sign_key=sign_key)] = cat
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        cat = pending.pop(ready[0])
        try:
            row, ckpt = ray.get(ready[0])
            if ckpt is not None:
                if hashlib.sha256(ckpt).hexdigest() != row.get("sha256"):
                    raise CostfilterError("the checkpoint arrived damaged (its SHA-256 does not match)")
                path = Path(out_dir) / f"{cat}.ckpt"
                if path.exists() and not force:
                    raise CostfilterError(f"{path}: appeared while fitting; not overwritten (use --force)")
                write_bytes(path, ckpt)
            rows[cat] = row
        except ray.exceptions.RayError as exc:  # killed for memory too often, a crash, no node left
            lines = str(exc).strip().splitlines()
            rows[cat] = {"category": cat, "error": f"task failed: {lines[-1] if lines else type(exc).__name__}"}
        except CostfilterError as exc:
            rows[cat] = {"category": cat, "error": str(exc)}
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
