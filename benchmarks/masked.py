"""Pixel-level benchmark on any root of MVTec-layout categories (e.g. ``shared/data``):
single-class (one model per category) and multi-class (one model on the union of all
categories' normal images, tested per category), every method side by side.

Each fit runs in its own process so that its time and peak RSS are its own.

    python -m benchmarks.masked [--data ../shared/data] [--force]

Writes benchmarks/results/masked.json and per-category grids and curves under docs/figures/masked/.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from costfilter.config import DetectorConfig
from costfilter.errors import DataError
from costfilter.tables import METRIC_LABELS, format_table

from .common import run_child, write_json

#: anomalib 2.7 PatchCore on this machine (shared/design/peer-measurements.md), same protocol.
ANOMALIB = {
    "magnetic_tile": {"image_auroc": 0.841, "image_ap": 0.897, "pixel_auroc": 0.740, "aupro": 0.645, "fit_s": 306},
    "metal_plate": {"image_auroc": 1.000, "image_ap": 1.000, "pixel_auroc": 0.982, "aupro": 0.893, "fit_s": 22},
    "welding": {"image_auroc": 0.953, "image_ap": 0.982, "pixel_auroc": 0.876, "aupro": 0.578, "fit_s": 11},
}
LAYOUT = "<category>/train/good/*, <category>/test/<type>/*, <category>/ground_truth/<type>/<stem>_mask.png"


def find_categories(root: Path, max_depth: int = 3) -> list[Path]:
    """Benchmark categories: MVTec-layout folders holding both ``train/good`` and ``test``, at most
    ``max_depth`` levels below ``root`` (the rule of the data loaders, searched deeper)."""
    from costfilter.data._common import find_categories as find

    found = find(Path(root), lambda d: (d / "train" / "good").is_dir() and (d / "test").is_dir(), None,
                 f"MVTec ({LAYOUT})", max_depth)
    names = [p.name for p in found]
    if len(set(names)) != len(names):
        raise DataError(f"{root}: two categories share a folder name ({', '.join(sorted(names))})")
    return found


#: bank_size that holds every patch: the exact upper bound of what a larger bank can give
FULL_BANK = 10**9


def run_masked(root: Path, json_out: Path, *, size: int = 256, methods: tuple[str, ...] = ("memory",),
               figures: Path | None = None, multi: bool = True, full_bank: bool = True,
               padding_ablation: bool = True, seed: int = 0, force: bool = False,
               config: DetectorConfig | None = None) -> dict[str, Any]:
    """Run single- (and multi-) class for each method; print tables; write JSON and figures.

    ``config`` (default: the library defaults) is used for every method, with ``method``,
    ``seed`` and ``features.image_size`` set from the arguments. ``full_bank`` adds, per
    category, the memory bank holding every training patch: the upper bound of the default bank;
    ``padding_ablation`` the default bank with the neighbourhood average that leaves the border
    padding out (the behaviour before PatchCore's was adopted).
    """
    from costfilter.methods import get_method

    for m in methods:
        get_method(m)  # an unknown name is a one-line error before any fit
    cats = find_categories(Path(root))
    base = config or DetectorConfig()
    base.seed = seed
    base.features.image_size = size
    runs: dict[str, Any] = {}
    t_all = time.perf_counter()

    def run(cfg: dict[str, Any], dirs: list[Path], tag: str, with_figures: bool) -> dict[str, Any]:
        spec = {"config": cfg, "data": [str(d) for d in dirs], "tag": tag,
                "figures": str(figures) if figures and with_figures else None}
        return run_child("fit_evaluate", spec, tag)

    for method in methods:
        cfg = dict(base.to_dict(), method=method)
        runs[method] = {"single": {d.name: run(cfg, [d], f"{method}-single-{d.name}", True) for d in cats}}
        if multi and len(cats) > 1:
            runs[method]["multi"] = run(cfg, cats, f"{method}-multi", False)
    if full_bank:
        cfg = base.to_dict()
        cfg.update(method="memory", memory=dict(cfg["memory"], bank_size=FULL_BANK, coreset_ratio=None))
        runs["memory_full_bank"] = {"single": {d.name: run(cfg, [d], f"full-bank-{d.name}", False) for d in cats}}
    if padding_ablation:
        cfg = base.to_dict()
        cfg.update(method="memory", features=dict(cfg["features"], pad_neighbourhood=False))
        runs["memory_unpadded"] = {"single": {d.name: run(cfg, [d], f"unpadded-{d.name}", False) for d in cats}}
    payload = {
        "benchmark": "masked",
        "seed": seed,
        "root": str(root),
        "config": base.to_dict(),
        "categories": {d.name: str(d.relative_to(root)) for d in cats},
        "protocol": {"image_size": size, "resize": "bilinear (antialiased), no crop", "mask_resize": "nearest",
                     "mask_binarisation": "value > 0", "eval_resolution": size, "aupro_fpr_limit": 0.3,
                     "thresholds": "memory bank: every train/good image in the bank, scored leave-one-image-out; "
                                   "trained methods: 10 % held-out train/good images; no test labels used"},
        "runs": runs,
        "total_s": time.perf_counter() - t_all,
        "anomalib_patchcore_same_machine": ANOMALIB,
    }
    write_json(json_out, payload, force)
    print(masked_tables(payload))
    print(f"results: {json_out}" + (f"; figures: {figures}" if figures else ""))
    return payload


def masked_tables(p: dict[str, Any]) -> str:
    """Single-class table per method with the full-bank and anomalib rows, then the multi-class table."""
    keys = list(METRIC_LABELS)
    anomalib = p["anomalib_patchcore_same_machine"]
    full = p["runs"].get("memory_full_bank", {}).get("single", {})
    unpadded = p["runs"].get("memory_unpadded", {}).get("single", {})
    out = []
    for method, run in p["runs"].items():
        if method in ("memory_full_bank", "memory_unpadded"):
            continue
        rows = []
        for cat, r in run["single"].items():
            m = r["per_category"][cat]
            rows.append([cat] + [m.get(k) for k in keys] + [r["bank_size"], f"{r['fit_s']:.1f}",
                                                             f"{r['images_per_s']:.1f}", f"{r['peak_rss_mb']:.0f}"])
            for label, extra in (("  full bank (upper bound)", full), ("  border padding left out", unpadded)):
                if method == "memory" and cat in extra:
                    f = extra[cat]
                    rows.append([label] + [f["per_category"][cat].get(k) for k in keys]
                                + [f["bank_size"], f"{f['fit_s']:.1f}", f"{f['images_per_s']:.1f}",
                                   f"{f['peak_rss_mb']:.0f}"])
            a = anomalib.get(cat)
            if a:
                rows.append(["  anomalib PatchCore"] + [a.get(k) for k in keys] + [None, str(a["fit_s"]), None, None])
        cats = list(run["single"])
        rows.append(["mean"] + [_mean([run["single"][c]["per_category"][c] for c in cats], k) for k in keys]
                    + [None] * 4)
        for label, extra in (("  full bank mean", full), ("  border padding left out, mean", unpadded)):
            if method == "memory" and extra and all(c in extra for c in cats):
                rows.append([label] + [_mean([extra[c]["per_category"][c] for c in cats], k) for k in keys]
                            + [None] * 4)
        a_cats = [c for c in cats if c in anomalib]
        if a_cats:
            rows.append(["  anomalib mean"] + [_mean([anomalib[c] for c in a_cats], k, strict=True) for k in keys]
                        + [None] * 4)
        out.append(f"**{method}, single-class** (one model per category)\n\n" + format_table(
            ["category"] + [METRIC_LABELS[k] for k in keys] + ["bank", "fit s", "test images/s", "peak RSS MB"], rows))
        if "multi" in run:
            mrows = []
            multi = run["multi"]["per_category"]
            for cat, r in run["single"].items():
                s, m = r["per_category"][cat], multi[cat]
                mrows.append([cat] + [f"{m[k]:.3f} ({m[k] - s[k]:+.3f})" if k in m else None for k in keys])
            out.append(f"**{method}, multi-class** (one model on all {len(multi)} categories; change vs single-class "
                       f"in brackets; fit {run['multi']['fit_s']:.1f} s, peak RSS {run['multi']['peak_rss_mb']:.0f} MB)"
                       "\n\n" + format_table(["category"] + [METRIC_LABELS[k] for k in keys], mrows))
        for cat, r in run["single"].items():
            pd = r.get("per_defect_image_auroc", {}).get(cat)
            if pd:
                out.append(f"{cat} I-AUROC per defect type (vs good): "
                           + ", ".join(f"{t} {v:.3f}" for t, v in pd.items()))
    if "memory" in p["runs"]:
        out.append("**Calibration check** (memory bank, single-class): each operating point's threshold, set on the "
                   "training images scored leave-one-out, applied to the test good images, which no fit saw. "
                   "Where the calibration holds, the target lies inside the test rate's interval. The last column is what "
                   "a line sees of the defects: the share of the test's defective images each point rejects (AUROC "
                   "hides it; `costfilter test` prints the same table for any model).\n\n"
                   + calibration_check(p["runs"]["memory"]["single"]))
    out.append(f"Whole run: {p['total_s'] / 60:.1f} min.")
    return "\n\n".join(out)


def calibration_check(single: dict[str, Any]) -> str:
    """Per category and operating point: target, false-reject rate on the calibration images with
    its exact 95 % interval, the rate on the test good images (a true holdout) and the share of
    the test's defective images the point rejects, each with its exact interval."""
    from costfilter.decisions import OperatingPoint, points_on_test

    rows = []
    for cat, r in single.items():
        mine = [x for x in r["scores"] if x["category"] == cat]
        stored = [OperatingPoint(**pt) for pt in r.get("operating_points", []) if pt["name"] != "chosen"]
        for point, test in zip(stored, points_on_test(stored, [x["score"] for x in mine], [x["label"] for x in mine])):
            lo, hi = test.false_reject_ci
            target = point.target_false_reject
            verdict = "yes" if lo <= target <= hi else ("lower (stricter than asked)" if hi < target else "higher")
            k = round(test.false_reject * test.n_good)
            rows.append([cat, point.name, f"{target:g}",
                         f"{point.false_reject:.2%} [{point.ci_low:.2%}, {point.ci_high:.2%}] of {point.n_good}",
                         f"{test.false_reject:.2%} [{lo:.2%}, {hi:.2%}] ({k} of {test.n_good})", verdict,
                         f"{test.recall:.1%} [{test.recall_ci[0]:.1%}, {test.recall_ci[1]:.1%}] of {test.n_defective}"])
    return format_table(["category", "point", "target", "false-reject on calibration (95 % CI), images",
                         "false-reject on test good (95 % CI)", "target inside the test interval",
                         "recall on test defects (95 % CI)"], rows)


def _mean(metrics: list[dict[str, Any]], key: str, strict: bool = False) -> float | None:
    """Mean of ``key`` over categories (NaN-free); None when ``strict`` and one lacks it."""
    vals = [m.get(key) for m in metrics]
    if strict and any(v is None for v in vals):
        return None
    vals = [v for v in vals if v is not None]
    return float(np.nanmean(vals)) if vals else None


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/masked.json"))
    ap.add_argument("--figures", type=Path, default=Path("docs/figures/masked"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run_masked(a.data, a.json, size=a.size, figures=a.figures, force=a.force)
