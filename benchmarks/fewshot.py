"""Few-shot: the memory bank fitted on N good images per set, beside zero-shot (no good images).

    python -m benchmarks.fewshot [--data ../shared/data] [--shots 2,4,8,16] [--seeds 0,1,2] [--force]

Writes benchmarks/results/fewshot.json.

For each shared masked set (magnetic_tile, metal_plate, welding) the memory bank is fitted with
``fit --shots N`` (N good training images drawn with the seed; defaults otherwise) for each N
and seed, and tested on the whole test split. Zero-shot (MuSc-style batch mutual scoring, its
defaults) needs no good images and is run once per set; the memory bank on every good image is
the other end. Each run is its own process (``fit_evaluate``). One shot is refused by design: a
fit needs two images so that one can be scored as unseen to set a threshold.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from costfilter.config import DetectorConfig
from costfilter.tables import format_table

from .common import run_child, write_json

SETS = {"magnetic_tile": "magnetic_tile/magnetic_tile", "metal_plate": "mpdd/metal_plate",
        "welding": "battery_weld/welding"}
KEYS = ("image_auroc", "pixel_auroc", "aupro")


def _metrics(r: dict[str, Any]) -> dict[str, Any]:
    return {**{k: r["mean"].get(k) for k in KEYS}, "fit_s": r["fit_s"], "test_s": r["test_s"]}


def run(data: Path, json_out: Path, *, shots: tuple[int, ...] = (2, 4, 8, 16), seeds: tuple[int, ...] = (0, 1, 2),
        force: bool = False) -> dict[str, Any]:
    sets: dict[str, Any] = {}
    for name, rel in SETS.items():
        folder = str(data / rel)
        rows: dict[str, Any] = {"zero-shot": _metrics(run_child(
            "fit_evaluate", {"config": DetectorConfig(method="zeroshot").to_dict(), "data": [folder]},
            f"{name} zero-shot"))}
        for n in shots:
            runs = []
            for seed in seeds:
                cfg = DetectorConfig(seed=seed, shots=n).to_dict()
                runs.append(_metrics(run_child("fit_evaluate", {"config": cfg, "data": [folder]},
                                               f"{name} {n}-shot seed {seed}")))
            rows[str(n)] = {"runs": runs, **{k: float(np.mean([r[k] for r in runs])) for k in KEYS},
                            **{f"{k}_range": [min(r[k] for r in runs), max(r[k] for r in runs)] for k in KEYS}}
        full = run_child("fit_evaluate", {"config": DetectorConfig().to_dict(), "data": [folder]}, f"{name} all")
        rows["all"] = {**_metrics(full), "n_train": full["n_train"]}
        sets[name] = rows
        print(f"{name}: " + ", ".join(f"{k} {v['image_auroc']:.3f}" for k, v in rows.items()), flush=True)
    payload = {"benchmark": "fewshot", "seed": list(seeds), "shots": list(shots), "sets": sets,
               "protocol": "memory bank at its defaults with fit --shots N (seeded draw per seed); zero-shot at its "
                           "defaults; every test image of each set; 256 px, masks nearest, AUPRO@0.3"}
    write_json(json_out, payload, force)
    print(table(payload))
    return payload


def table(p: dict[str, Any]) -> str:
    """One row per set and number of good images: I-AUROC / P-AUROC / AUPRO (mean over seeds, range)."""
    rows = []
    for name, r in p["sets"].items():
        for key, v in r.items():
            label = ("0 (zero-shot)" if key == "zero-shot" else f"all ({v['n_train']})" if key == "all"
                     else key)
            cells = []
            for k in KEYS:
                rng = v.get(f"{k}_range")
                cells.append(f"{v[k]:.3f}" + (f" ({rng[0]:.3f}–{rng[1]:.3f})" if rng else ""))
            rows.append([name, label, *cells])
    return format_table(["set", "good images", "I-AUROC (range over seeds)", "P-AUROC", "AUPRO"], rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--shots", default="2,4,8,16")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/fewshot.json"))
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    run(args.data, args.json, shots=tuple(int(x) for x in args.shots.split(",")),
        seeds=tuple(int(x) for x in args.seeds.split(",")), force=args.force)
