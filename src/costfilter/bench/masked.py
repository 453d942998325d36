"""Pixel-level benchmark on any root of MVTec-layout categories (e.g. ``shared/data``):
single-class (one model per category) and multi-class (one model on the union of all
categories' normal images, tested per category), every method side by side.

Each fit runs in its own process so that its time and peak RSS are its own."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DetectorConfig
from ..errors import CostfilterError, DataError
from ..report import METRIC_LABELS, format_table, peak_rss_mb
from .common import run_child, write_json

#: anomalib 2.7 PatchCore on this machine (shared/design/peer-measurements.md), same protocol.
ANOMALIB = {
    "magnetic_tile": {"image_auroc": 0.841, "image_ap": 0.897, "pixel_auroc": 0.740, "aupro": 0.645, "fit_s": 306},
    "metal_plate": {"image_auroc": 1.000, "image_ap": 1.000, "pixel_auroc": 0.982, "aupro": 0.893, "fit_s": 22},
    "welding": {"image_auroc": 0.953, "image_ap": 0.982, "pixel_auroc": 0.876, "aupro": 0.578, "fit_s": 11},
}
LAYOUT = "<category>/train/good/*, <category>/test/<type>/*, <category>/ground_truth/<type>/<stem>_mask.png"


def find_categories(root: Path, max_depth: int = 3) -> list[Path]:
    """Category folders (holding ``train/good`` and ``test``) at most ``max_depth`` levels below ``root``."""
    if not root.is_dir():
        raise DataError(f"{root}: folder not found (expected a root of MVTec-layout categories: {LAYOUT})")
    found, frontier = [], [root]
    for _ in range(max_depth + 1):
        nxt = []
        for d in frontier:
            if (d / "train" / "good").is_dir() and (d / "test").is_dir():
                found.append(d)
            else:
                nxt += sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        frontier = nxt
    if not found:
        raise DataError(f"{root}: no category in MVTec layout found ({LAYOUT})")
    names = [p.name for p in found]
    if len(set(names)) != len(names):
        raise DataError(f"{root}: two categories share a folder name ({', '.join(sorted(names))})")
    return sorted(found, key=lambda p: p.name)


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    from ..api import Detector
    from ..data.mvtec import load_mvtec
    from ..metrics import image_metrics

    cfg = DetectorConfig.from_dict(spec["config"])
    samples = [s for d in spec["categories"] for s in load_mvtec(Path(d))]
    t0 = time.perf_counter()
    det = Detector(cfg, progress=False).fit(samples)
    fit_s = time.perf_counter() - t0
    rss_fit = peak_rss_mb()
    ev = det.evaluate(samples, keep_maps=spec.get("figures") is not None)
    per_cat = ev.per_category
    for cat, m in per_cat.items():
        recs = [r for r in ev.samples if r.category == cat]
        good = [r.score for r in recs if r.label == 0]
        types = sorted({r.defect for r in recs if r.label == 1})
        if len(types) > 1:
            m["per_defect_image_auroc"] = {
                t: image_metrics(good + [r.score for r in recs if r.defect == t],
                                 [0] * len(good) + [1] * sum(r.defect == t for r in recs))["image_auroc"]
                for t in types}
    if spec.get("figures"):
        from .figures import category_figures

        for cat in per_cat:
            category_figures(det, ev, cat, Path(spec["figures"]), spec["tag"])
    return {"per_category": per_cat, "fit_s": fit_s, "test_s": ev.seconds,
            "images_per_s": ev.images_per_second, "peak_rss_fit_mb": rss_fit, "peak_rss_mb": peak_rss_mb(),
            "bank_size": det.state.get("bank_size"), "n_train": det.state["n_train_images"],
            "image_threshold": det.thresholds.image, "pixel_threshold": det.thresholds.pixel}


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    return run_child("costfilter.bench.masked", spec, spec['tag'])


def run_masked(root: Path, json_out: Path, *, size: int = 256, methods: tuple[str, ...] = ("memory",),
               figures: Path | None = None, multi: bool = True, seed: int = 0, force: bool = False,
               config: DetectorConfig | None = None) -> dict[str, Any]:
    """Run single- (and multi-) class for each method; print tables; write JSON and figures.

    ``config`` (default: the library defaults) is used for every method, with ``method``,
    ``seed`` and ``features.image_size`` set from the arguments.
    """
    from ..methods import METHODS

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise CostfilterError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    cats = find_categories(Path(root))
    base = config or DetectorConfig()
    base.seed = seed
    base.features.image_size = size
    runs: dict[str, Any] = {}
    t_all = time.perf_counter()
    for method in methods:
        single = {}
        for d in cats:
            spec = {"config": dict(base.to_dict(), method=method), "categories": [str(d)],
                    "tag": f"{method}-single-{d.name}", "figures": str(figures) if figures else None}
            single[d.name] = _run(spec)
        runs[method] = {"single": single}
        if multi and len(cats) > 1:
            spec = {"config": dict(base.to_dict(), method=method), "categories": [str(d) for d in cats],
                    "tag": f"{method}-multi", "figures": None}
            runs[method]["multi"] = _run(spec)
    payload = {
        "benchmark": "masked",
        "seed": seed,
        "root": str(root),
        "config": base.to_dict(),
        "categories": {d.name: str(d.relative_to(root)) for d in cats},
        "protocol": {"image_size": size, "resize": "bilinear (antialiased), no crop", "mask_resize": "nearest",
                     "mask_binarisation": "value > 0", "eval_resolution": size, "aupro_fpr_limit": 0.3,
                     "thresholds": "calibrated on 10 % held-out train/good images; no test labels used"},
        "runs": runs,
        "total_s": time.perf_counter() - t_all,
        "anomalib_patchcore_same_machine": ANOMALIB,
    }
    write_json(json_out, payload, force)
    print(masked_tables(payload))
    print(f"results: {json_out}" + (f"; figures: {figures}" if figures else ""))
    return payload


def masked_tables(p: dict[str, Any]) -> str:
    """Single-class table per method with the anomalib row, then the multi-class drop table."""
    keys = list(METRIC_LABELS)
    out = []
    for method, run in p["runs"].items():
        rows = []
        for cat, r in run["single"].items():
            m = r["per_category"][cat]
            rows.append([cat] + [m.get(k) for k in keys] + [f"{r['fit_s']:.1f}", f"{r['images_per_s']:.1f}",
                                                             f"{r['peak_rss_mb']:.0f}"])
            a = p["anomalib_patchcore_same_machine"].get(cat)
            if a:
                rows.append(["  anomalib PatchCore"] + [a.get(k) for k in keys] + [str(a["fit_s"]), None, None])
        means = {k: float(np.nanmean([r["per_category"][c].get(k, np.nan) for c, r in run["single"].items()]))
                 for k in keys}
        rows.append(["mean"] + [means[k] for k in keys] + [None, None, None])
        a_cats = [c for c in run["single"] if c in p["anomalib_patchcore_same_machine"]]
        if a_cats:
            rows.append(["  anomalib mean"] + [
                float(np.mean([p["anomalib_patchcore_same_machine"][c][k] for c in a_cats]))
                if all(k in p["anomalib_patchcore_same_machine"][c] for c in a_cats) else None for k in keys]
                + [None, None, None])
        out.append(f"**{method}, single-class** (one model per category)\n\n" + format_table(
            ["category"] + [METRIC_LABELS[k] for k in keys] + ["fit s", "test images/s", "peak RSS MB"], rows))
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
            pd = r["per_category"][cat].get("per_defect_image_auroc")
            if pd:
                out.append(f"{cat} I-AUROC per defect type (vs good): "
                           + ", ".join(f"{t} {v:.3f}" for t, v in pd.items()))
    out.append(f"Whole run: {p['total_s'] / 60:.1f} min.")
    return "\n\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        print(json.dumps(_child(json.loads(sys.argv[2]))))
