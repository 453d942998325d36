"""The operator's loop on real data: does teaching confirmed-good images keep up with a refit?

    python -m benchmarks.loop [--data ../shared/data] [--start 0.2] [--steps 4] [--seed 0] [--force]

Writes benchmarks/results/loop.json.

On magnetic_tile, a memory bank is fitted on a seeded 20 % of the good training images. The
remaining good training images then arrive in ``steps`` equal batches, and after each batch
three models are measured on the test split (whose labels only evaluate):

* **loop, flagged only**: each batch is inspected by the model as it stands; the images it
  flags (review, reject or unknown) reach the review queue, the operator confirms them good (they
  are), and they are applied (``Detector.teach(..., recalibrate=False)``): they join the bank,
  the thresholds stay. What passed is not taught. This is what the service does by default.
* **loop, flagged only, re-calibrated**: the same, with the thresholds set again on the earlier
  calibration images plus the taught ones (``recalibrate=True``). The taught images are the top
  of the good scores, not a sample of them, so this shows what that bias costs.
* **loop, every image**: every image of the batch confirmed good and applied.
* **refit**: a memory bank fitted from scratch on every good image seen so far.

Reported per model: false rejects on the test good images (share decided ``reject``, exact 95 %
interval; and the share flagged, review included), recall on the test defect images (share not
passed), I-AUROC, AUPRO, bank rows and the seconds the step took (apply, or the whole fit).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import numpy as np

from costfilter.tables import format_table

from .common import write_json

CATEGORY = "magnetic_tile/magnetic_tile"


def _measure(det: Any, test: list[Any]) -> dict[str, Any]:
    from costfilter.decisions import clopper_pearson

    ev = det.evaluate(test)
    preds = det.predict([s.path for s in test])
    good = [p.decision for p, s in zip(preds, test) if s.label == 0]
    bad = [p.decision for p, s in zip(preds, test) if s.label == 1]
    k = sum(d == "reject" for d in good)
    lo, hi = clopper_pearson(k, len(good))
    return {"image_auroc": ev.mean["image_auroc"], "aupro": ev.mean.get("aupro"), "false_reject": k / len(good),
            "false_reject_ci": [lo, hi], "flagged": sum(d != "pass" for d in good) / len(good),
            "recall": sum(d != "pass" for d in bad) / len(bad), "n_good": len(good), "n_defect": len(bad),
            "bank_rows": det.state.bank_size, "image_threshold": det.thresholds.image}


def run(data: Path, json_out: Path, *, start: float = 0.2, steps: int = 4, seed: int = 0,
        force: bool = False) -> dict[str, Any]:
    from costfilter.api import Detector
    from costfilter.config import DetectorConfig
    from costfilter.data.mvtec import load_mvtec

    samples = load_mvtec(data / CATEGORY)
    train = sorted((s for s in samples if s.split == "train" and s.label == 0), key=lambda s: str(s.path))
    test = [s for s in samples if s.split == "test"]
    order = np.random.default_rng(seed).permutation(len(train))
    n0 = round(start * len(train))
    first = [train[i] for i in order[:n0]]
    batches = [[train[i] for i in part] for part in np.array_split(order[n0:], steps)]
    rows: list[dict[str, Any]] = []

    def record(step: int, variant: str, det: Any, seconds: float, images: int, taught: int) -> None:
        m = _measure(det, test)
        rows.append({"step": step, "variant": variant, "images_seen": images, "images_taught": taught,
                     "seconds": seconds, **m})
        print(f"step {step} {variant:<38} seen {images:4d} taught {taught:4d}  I-AUROC {m['image_auroc']:.3f} "
              f"AUPRO {m['aupro']:.3f}  false reject {m['false_reject']:.3f}  flagged {m['flagged']:.3f}  "
              f"recall {m['recall']:.3f}  rows {m['bank_rows']}  {seconds:.1f} s", flush=True)

    cfg = DetectorConfig(seed=seed)
    t0 = time.perf_counter()
    base = Detector(cfg, progress=False).fit(first)
    record(0, "start", base, time.perf_counter() - t0, n0, n0)
    loops = {"loop, flagged only": (copy.deepcopy(base), False),
             "loop, flagged only, re-calibrated": (copy.deepcopy(base), True)}
    every = copy.deepcopy(base)
    seen = list(first)
    taught = dict.fromkeys(loops, n0)
    taught_every = n0
    for step, batch in enumerate(batches, 1):
        seen += batch
        paths = [s.path for s in batch]
        for name, (det, recalibrate) in loops.items():
            flagged = [p.path for p in det.predict(paths) if p.decision != "pass"]
            t0 = time.perf_counter()
            if flagged:
                det.teach(flagged, who="benchmark", recalibrate=recalibrate)
            taught[name] += len(flagged)
            record(step, name, det, time.perf_counter() - t0, len(seen), taught[name])
        t0 = time.perf_counter()
        every.teach(paths, who="benchmark")
        taught_every += len(paths)
        record(step, "loop, every image", every, time.perf_counter() - t0, len(seen), taught_every)
        t0 = time.perf_counter()
        refit = Detector(DetectorConfig(seed=seed), progress=False).fit(list(seen))
        record(step, "refit", refit, time.perf_counter() - t0, len(seen), len(seen))
    payload = {"benchmark": "loop", "seed": seed, "set": CATEGORY, "start_fraction": start, "steps": steps,
               "n_train_good": len(train), "n_test": len(test), "rows": rows}
    write_json(json_out, payload, force)
    print(table(payload))
    return payload


def table(p: dict[str, Any]) -> str:
    """The README table: one row per step and model."""
    head = ["step", "model", "good images seen / taught", "false reject on test good (95 % CI)", "flagged",
            "recall on test defects", "I-AUROC", "AUPRO", "bank rows", "step s"]
    body = []
    for r in p["rows"]:
        lo, hi = r["false_reject_ci"]
        body.append([str(r["step"]), r["variant"], f"{r['images_seen']} / {r['images_taught']}",
                     f"{r['false_reject']:.3f} ({lo:.3f}–{hi:.3f})", f"{r['flagged']:.3f}", f"{r['recall']:.3f}",
                     f"{r['image_auroc']:.3f}",
                     f"{r['aupro']:.3f}", str(r["bank_rows"]), f"{r['seconds']:.1f}"])
    return format_table(head, body)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--start", type=float, default=0.2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/loop.json"))
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    run(args.data, args.json, start=args.start, steps=args.steps, seed=args.seed, force=args.force)
