"""Input size × shared masked set (issue 32): every candidate size's test numbers, fit time and
speed, beside what ``--image-size auto`` chose on validation (held-out good images + synthetic
anomalies; test labels only evaluate), so readers see what the choice costs and gains.

    python -m benchmarks.image_size [--data ../shared/data] [--sizes 256 320 384 448 512] [--add]

Per set and size: the default memory bank fitted on all training images at that size and tested
(``fit_evaluate`` in a child process: I-AUROC, P-AP, AUPRO, fit s, scoring images/s); then the
auto choice run on the same set (its own fits on four fifths of the good images). Writes
benchmarks/results/image_size.json; ``--resume`` keeps finished children. ``--add`` keeps the
sets already in that file and runs only the others (each set records the commit and CPU count it
was measured with, so a table joined from two runs says so).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from costfilter.config import DetectorConfig
from costfilter.provenance import environment
from costfilter.sizing import CANDIDATES, REFERENCE_SIZE, SPEED_FLOOR, SizeChoice
from costfilter.tables import format_table

from . import common
from .common import run_child, write_json
from .masked import find_categories


def auto_choice(spec: dict[str, Any]) -> dict[str, Any]:
    """Child kind: the auto size choice on ``spec["data"]`` (no final fit)."""
    from costfilter.sizing import choose_image_size

    from .common import load_samples

    cfg = DetectorConfig.from_dict(spec["config"])
    return choose_image_size(load_samples(spec["data"]), cfg, candidates=spec["sizes"], progress=False).to_dict()


def run(json_out: Path, root: Path, sizes: list[int], seed: int = 0, force: bool = False,
        add: bool = False) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    if add:
        old = json.loads(json_out.read_text())
        if old["sizes"] != sizes or old["seed"] != seed:
            raise SystemExit(f"{json_out}: measured with sizes {old['sizes']} and seed {old['seed']}; --add "
                             "needs the same")
        env = old["environment"]
        rows = {k: dict(v, measured_with=v.get("measured_with") or _measured_with(env))
                for k, v in old["rows"].items()}
    for cat in find_categories(root):
        if cat.name in rows:
            print(f"{cat.name}: kept from {json_out}", flush=True)
            continue
        per_size = {}
        for size in sizes:
            cfg = DetectorConfig(seed=seed)
            cfg.features.image_size = size
            print(f"{cat.name} {size} px", flush=True)
            per_size[str(size)] = run_child("fit_evaluate", {"config": cfg.to_dict(), "data": [str(cat)], "speed": 64},
                                            f"{cat.name} {size}")
        choice = run_child("image_size_auto", {"config": DetectorConfig(seed=seed).to_dict(), "data": [str(cat)],
                                               "sizes": sizes}, f"{cat.name} auto")
        rows[cat.name] = {"sizes": per_size, "auto": choice, "measured_with": _measured_with(environment())}
    payload = {"benchmark": "image_size", "seed": seed, "data_root": str(root), "sizes": sizes,
               "speed_floor": SPEED_FLOOR, "reference_size": REFERENCE_SIZE, "rows": rows}
    write_json(json_out, payload, force)
    print(table(payload))
    return payload


def _measured_with(env: dict[str, Any]) -> dict[str, Any]:
    return {"git_commit": env["git_commit"], "cpu_count": env["cpu_count"]}


def table(p: dict[str, Any]) -> str:
    """README table: size × set, test numbers and cost, the validation score and the choice."""
    head = ["set", "size", "I-AUROC", "P-AP", "AUPRO", "fit s", "scoring images/s (batch 32)",
            "÷ backbone at 256", "validation mean", "auto"]
    out = []
    for cat, r in p["rows"].items():
        at_reference = r["sizes"].get(str(p["reference_size"]))
        ref = at_reference["throughput"]["backbone_images_per_s"] if at_reference else float("nan")
        choice = SizeChoice.from_dict(r["auto"])
        trials = {t.size: t for t in choice.trials}
        for size, x in r["sizes"].items():
            t = trials.get(int(size))
            if int(size) == choice.size:
                mark = "chosen"
            elif t is None:
                mark = "not tried"
            else:
                mark = "" if t.allowed else "too slow"
            m, speed = x["mean"], x["throughput"]["model_images_per_s"]
            out.append([cat, size, f"{m['image_auroc']:.3f}", f"{m['pixel_ap']:.3f}", f"{m['aupro']:.3f}",
                        f"{x['fit_s']:.0f}", f"{speed:.1f}", f"{speed / ref:.2f}",
                        "—" if t is None else f"{t.score:.3f}", mark])
    commits = {cat: r["measured_with"]["git_commit"] for cat, r in p["rows"].items() if "measured_with" in r}
    joined = ("\n\nSets measured in separate runs: " + "; ".join(f"{c} at `{v[:12]}`" for c, v in commits.items())
              + "." if len(set(commits.values())) > 1 else "")
    return format_table(head, out) + joined + (
        f"\n\nauto: sizes tried smallest first on held-out good images with synthetic anomalies; a size is "
        f"allowed while its scoring runs at ≥ {p['speed_floor']:g}× the backbone alone at {p['reference_size']} px "
        "(measured in the choice's own run); the best mean of I-AUROC, P-AP and AUPRO wins.")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/image_size.json"))
    ap.add_argument("--sizes", type=int, nargs="+", default=list(CANDIDATES))
    ap.add_argument("--resume", type=Path, default=None, help="folder keeping finished children")
    ap.add_argument("--add", action="store_true", help="keep the sets already in --json; run only the others")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    common.CHILD_CACHE = a.resume
    run(a.json, a.data, a.sizes, force=a.force or a.add, add=a.add)
