"""The paper protocol (``costfilter benchmark paper``): the per-category table the anomaly-detection
papers print, measured the way this package measures, and the protocol written next to it.

Single-class: one model per category, fitted on its normal training images, tested on its test
images. Multi-class: one model fitted on every category's normal training images at once (the
"unified" setting), tested on each category. Zero-shot methods fit nothing, so they have one
setting. Thresholds play no part: every metric sweeps them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import DetectorConfig
from .data import Sample, categories_of, load_dataset
from .metrics.pimo import FPR_BOUNDS
from .provenance import environment

#: the columns, in the papers' order
COLUMNS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "aupro", "aupimo")
SETTINGS = ("single", "multi")


def protocol(cfg: DetectorConfig, eval_size: int) -> dict[str, Any]:
    """How the numbers were made, in words and values (stored with them)."""
    return {
        "input": f"each image resized whole to {cfg.features.image_size} × {cfg.features.image_size} (bilinear, "
                 "aspect ratio not kept, no centre crop); ImageNet normalisation (CLIP's for CLIP towers)",
        "maps": f"anomaly maps resized to {eval_size} × {eval_size} (bilinear) for the pixel metrics",
        "masks": f"ground-truth masks resized to {eval_size} × {eval_size} (nearest), defect where value > 0",
        "image_metrics": "I-AUROC, I-AP (average precision, step-wise as scikit-learn), I-F1max over every "
                         "threshold, from the image score",
        "pixel_metrics": "P-AUROC, P-AP, P-F1max over all test pixels of the category pooled",
        "aupro": "AUPRO: mean per-region overlap (8-connected regions) integrated over pixel FPR 0–0.3, "
                 "divided by 0.3",
        "aupimo": f"AUPIMO: per anomalous image, TPR against the normal images' mean FPR integrated over "
                  f"log FPR in [{FPR_BOUNDS[0]:g}, {FPR_BOUNDS[1]:g}], normalised to [0, 1], averaged over "
                  "anomalous images with a defect pixel; exact (every threshold), not on a threshold grid",
        "thresholds": "none: every metric sweeps the threshold",
        "training_images": "normal training images only; test labels and masks only evaluate",
    }


def run_paper(roots: Sequence[Path], fmt: str, cfg: DetectorConfig, *, settings: Sequence[str] = SETTINGS,
              categories: Sequence[str] | None = None, progress: bool = True,
              log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Fit and test ``cfg``'s method on the datasets at ``roots`` (format ``fmt``) in each
    setting; returns the JSON-ready result: per setting, each category's metrics and their mean,
    and each model's fit and test seconds (keyed by its categories joined with ``+``), with the
    protocol, the config and the environment."""
    from .api import Detector

    samples: list[Sample] = [s for r in roots for s in load_dataset(r, fmt, categories)]
    cats = categories_of(samples)
    zero_shot = cfg.method == "zeroshot"
    eval_size = cfg.features.image_size
    out: dict[str, Any] = {"benchmark": "paper", "seed": cfg.seed, "format": fmt, "data": [str(r) for r in roots], "categories": cats,
                           "method": cfg.method, "config": cfg.to_dict(), "protocol": protocol(cfg, eval_size),
                           "settings": {}}
    for setting in (("zero-shot",) if zero_shot else tuple(settings)):
        per: dict[str, dict[str, float]] = {}
        seconds: dict[str, dict[str, float]] = {}  # per model: one per category, or one for all
        groups = [[c] for c in cats] if setting == "single" else [cats]
        for group in groups:
            part = [s for s in samples if s.category in group]
            t0 = time.perf_counter()
            det = Detector(DetectorConfig.from_dict(cfg.to_dict()), progress=progress)
            if not zero_shot:
                log(f"{setting}: fit {', '.join(group)} ({sum(s.split == 'train' for s in part)} images)")
                det.fit(part)
            fit_s = time.perf_counter() - t0
            ev = det.evaluate(part)
            for cat, m in ev.per_category.items():
                per[cat] = {k: m[k] for k in COLUMNS if k in m} | {"n_test": m["n_test"],
                                                                  "n_anomalous": m["n_anomalous"]}
            seconds["+".join(group)] = {"fit_s": fit_s, "test_s": ev.seconds}
        mean = {k: float(np.mean([m[k] for m in per.values() if k in m])) for k in COLUMNS
                if any(k in m for m in per.values())}
        out["settings"][setting] = {"per_category": per, "mean": mean, "seconds": seconds}
    out["environment"] = environment()
    return out


def paper_tables(result: dict[str, Any]) -> str:
    """One Markdown table per setting, the papers' columns, a mean row."""
    from .tables import METRIC_LABELS, format_table

    blocks = []
    for setting, r in result["settings"].items():
        rows = [[cat] + [m.get(k) for k in COLUMNS] for cat, m in r["per_category"].items()]
        if len(rows) > 1:
            rows.append(["mean"] + [r["mean"].get(k) for k in COLUMNS])
        blocks.append(f"{result['method']}, {setting}:\n\n"
                      + format_table(["category"] + [METRIC_LABELS[k] for k in COLUMNS], rows))
    return "\n\n".join(blocks)
