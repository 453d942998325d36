"""Ray batch scoring vs the local path on this machine (issue 17).

    python -m benchmarks.ray_scale [--category ../shared/data/magnetic_tile/magnetic_tile] [--paths 5000] [--force]

Fits the default memory bank on the category, replicates its test images to --paths distinct
paths, and scores them locally, on Ray with one actor holding every CPU, and with one actor per
CPU: images/s, agreement with the local scores, Ray's start-up, per-job and per-image costs.
Writes benchmarks/results/ray_scale.json (needs the [ray] extra).

Ray batch scoring against the local path on one machine (issue 17).

The default memory bank is fitted on a category's good images; its test images are replicated
(hard links, distinct files) to about ``n_paths``. The same paths are then scored:

- **local**: ``Detector.predict`` in one process (its decode thread, torch on every core), plus the
  regions each row reports, in chunks so memory stays bounded: the work a Ray actor does per image;
- **Ray, 1 actor** holding every CPU: the same compute as local, so the difference is Ray's
  per-image cost;
- **Ray, N actors** of one CPU each.

Ray's fixed cost per job (actor start, model load, planning, merging the table) is measured on a
job of one batch; its start-up (``ray.init``) on its own. The backbone alone, on the same
machine and run, is the reference for the ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from costfilter.api import Detector
from costfilter.config import DetectorConfig
from costfilter.data import load_dataset, split_of
from costfilter.provenance import file_sha256
from costfilter.tables import format_table

from .common import load_tensors, throughput, write_json


def _local(det: Detector, paths: list[str], chunk: int = 256) -> tuple[float, dict[str, tuple[float, str]]]:
    """Seconds to score ``paths`` locally (with each image's regions), and ``path → (score, decision)``."""
    from costfilter.result_files import render_size

    pixel, min_area = det.thresholds.pixel, det.config.calibration.min_region_area
    out = {}
    t0 = time.perf_counter()
    for i in range(0, len(paths), chunk):
        for p in det.predict(paths[i : i + chunk]):
            p.regions(pixel, min_area, at=render_size(p.size))
            out[p.path] = (p.score, p.decision)
    return time.perf_counter() - t0, out


def _ray_job(ckpt: Path, paths: list[str], out: Path, actors: int, cpus: float, batch_size: int
             ) -> tuple[float, Any]:
    from costfilter.distributed.inference import predict_on_ray

    t0 = time.perf_counter()
    run = predict_on_ray(ckpt, paths, out, model_sha256=file_sha256(ckpt), actors=actors, cpus_per_actor=cpus,
                         batch_size=batch_size, progress=False)
    return time.perf_counter() - t0, run


def run_ray_scale(json_out: Path, category: Path, *, n_paths: int = 5000, seed: int = 0, force: bool = False
                  ) -> dict[str, Any]:
    """Fit, replicate the test images to ``n_paths`` paths, score them locally and on Ray."""
    from costfilter.distributed.session import ray_session

    cpus = os.cpu_count() or 1
    samples = load_dataset(category)
    test = [str(s.path) for s in split_of(samples, "test")]
    cfg = DetectorConfig(seed=seed)
    t0 = time.perf_counter()
    det = Detector(cfg, progress=False).fit(samples)
    fit_s = time.perf_counter() - t0
    backbone = throughput(det, load_tensors([Path(p) for p in test[:64]], cfg.features.image_size),
                          batch=cfg.batch_size)["backbone_images_per_s"]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = work / "model.ckpt"
        det.save(ckpt)
        paths = []
        for k in range(-(-n_paths // len(test))):
            folder = work / "images" / f"copy{k:02d}"
            folder.mkdir(parents=True)
            for p in test:
                link = folder / f"{Path(p).parent.name}-{Path(p).name}"
                # hard links (copies across filesystems): a symbolic link is the file it points to,
                # and the results keep one row per file however its path is spelled
                try:
                    os.link(Path(p).resolve(), link)
                except OSError:
                    shutil.copyfile(p, link)
                paths.append(str(link))
        paths = paths[:n_paths]
        print(f"  fitted in {fit_s:.0f} s; scoring {len(paths)} paths ({len(test)} test images replicated)", flush=True)
        local_s, local = _local(det, paths)
        rows.append({"engine": "local", "actors": 0, "cpus_per_actor": cpus, "seconds": local_s,
                     "images_per_s": len(paths) / local_s})
        print(f"  local: {len(paths) / local_s:.1f} images/s", flush=True)
        t0 = time.perf_counter()
        with ray_session(None):
            init_s = time.perf_counter() - t0
            # a one-batch job: what is left after its one batch's compute is the cost of any job
            job_s, _ = _ray_job(ckpt, paths[: cfg.batch_size], work / "ray-small", 1, cpus, cfg.batch_size)
            job_s -= cfg.batch_size * local_s / len(paths)
            agreement = {}
            for actors, per_actor in ((1, cpus), (cpus, 1)):
                seconds, run = _ray_job(ckpt, paths, work / f"ray-{actors}", actors, per_actor, cfg.batch_size)
                got = dict(zip(run.table["image"].to_pylist(),
                               zip(run.table["score"].to_pylist(), run.table["decision"].to_pylist())))
                diff = np.array([abs(got[p][0] - local[p][0]) for p in paths])
                rel = diff / np.maximum(np.abs([local[p][0] for p in paths]), 1e-12)
                agreement[actors] = {"max_abs_score_diff": float(diff.max()), "max_rel_score_diff": float(rel.max()),
                                     "same_decisions": sum(got[p][1] == local[p][1] for p in paths) / len(paths),
                                     "errors": run.errors, "rows": run.table.num_rows}
                rows.append({"engine": "ray", "actors": actors, "cpus_per_actor": per_actor, "seconds": seconds,
                             "images_per_s": len(paths) / seconds, "over_local": local_s / seconds,
                             **agreement[actors]})
                print(f"  ray, {actors} actor(s) × {per_actor} CPU: {len(paths) / seconds:.1f} images/s "
                      f"({local_s / seconds:.2f}× local), max score diff {diff.max():.1e}", flush=True)
    one_actor = next(r for r in rows if r["engine"] == "ray" and r["actors"] == 1)
    per_image_ms = 1000 * (one_actor["seconds"] - job_s - local_s) / len(paths)
    payload = {"benchmark": "ray_scale", "seed": seed, "category": str(category), "n_paths": len(paths),
               "n_test_images": len(test), "batch_size": cfg.batch_size, "image_size": cfg.features.image_size,
               "fit_s": fit_s, "backbone_images_per_s": backbone, "ray_init_s": init_s, "ray_job_overhead_s": job_s,
               "ray_overhead_per_image_ms": per_image_ms, "rows": rows}
    write_json(json_out, payload, force)
    print(ray_scale_table(payload))
    return payload


def ray_scale_table(p: dict[str, Any]) -> str:
    """README table of the Ray benchmark."""
    head = ["engine", "actors × CPUs", "images/s", "× local", "× backbone alone", "max score diff (abs / rel)",
            "same decisions"]
    rows = []
    for r in p["rows"]:
        local = r["engine"] == "local"
        rows.append([r["engine"], "1 process × " + str(r["cpus_per_actor"]) if local else
                     f"{r['actors']} × {r['cpus_per_actor']}", f"{r['images_per_s']:.1f}",
                     "1.00" if local else f"{r['over_local']:.2f}",
                     f"{r['images_per_s'] / p['backbone_images_per_s']:.2f}",
                     "—" if local else f"{r['max_abs_score_diff']:.1e} / {r['max_rel_score_diff']:.1e}",
                     "—" if local else f"{r['same_decisions']:.1%}"])
    note = (f"\n\n{p['n_paths']} paths ({p['n_test_images']} test images of {Path(p['category']).name} replicated), "
            f"batch {p['batch_size']}, {p['image_size']} px; backbone alone {p['backbone_images_per_s']:.1f} images/s. "
            f"Ray start-up (`ray.init`, local cluster) {p['ray_init_s']:.1f} s; fixed cost per job (actor start, "
            f"model load, planning, table merge; a one-batch job) {p['ray_job_overhead_s']:.1f} s; cost per image "
            f"beyond that, 1 actor on every CPU against local: {p['ray_overhead_per_image_ms']:.2f} ms.")
    return format_table(head, rows) + note


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--category", type=Path, default=Path("../shared/data/magnetic_tile/magnetic_tile"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/ray_scale.json"))
    ap.add_argument("--paths", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run_ray_scale(a.json, a.category, n_paths=a.paths, seed=a.seed, force=a.force)
