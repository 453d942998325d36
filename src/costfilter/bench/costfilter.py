"""CostFilter-AD benchmark: base alone vs base + filtering network, for both bases, on ELPV
(mono and poly as two classes: the class-aware adaptor) and on masked MVTec-layout categories.

One fit per (data, base); three maps from one forward pass: the base alone (λ = 1), the filter
alone (λ = 0) and the blend chosen on validation. Each fit runs in its own process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DetectorConfig
from ..provenance import peak_rss_mb
from ..tables import METRIC_LABELS, format_table
from .common import run_child, write_json

VARIANTS = ("base", "filtered", "filter_only")


def evaluate_variants(det: Any, test: list, keep_scores: bool = True) -> dict[str, Any]:
    """Metrics per category for each variant, from one pass of the model over ``test`` samples."""
    from ..data import mask_at
    from ..data.loader import iter_batches
    from ..metrics import image_metrics, pixel_metrics

    model = det.model
    lams = {"base": 1.0, "filtered": float(model.blend), "filter_only": 0.0}
    size = det.config.features.image_size
    out: dict[str, Any] = {v: {} for v in VARIANTS}
    scores_out: dict[str, Any] = {}
    t0 = time.perf_counter()
    for cat in dict.fromkeys(s.category for s in test):
        items = [s for s in test if s.category == cat]
        with_masks = any(s.label for s in items) and all(s.mask is not None for s in items if s.label)
        scores = {v: [] for v in VARIANTS}
        maps = {v: [] for v in VARIANTS}
        sizes = []
        for batch in iter_batches([s.path for s in items], size, 16):
            with torch.inference_mode():
                volume, feats, init = model.inputs(batch.images)
                logits, _ = model.filter(volume, feats, init.unsqueeze(1))
                for v, lam in lams.items():
                    m, sc = model.scorer.finish(model.fuse(logits, init, lam))
                    scores[v] += sc.tolist()
                    if with_masks:
                        maps[v].append(m.numpy().astype(np.float32))
            sizes += batch.sizes
        labels = [s.label for s in items]
        masks = np.stack([mask_at(s.mask, hw, size) for s, hw in zip(items, sizes)]) if with_masks else None
        for v in VARIANTS:
            metrics = image_metrics(scores[v], labels)
            if with_masks:
                metrics.update(pixel_metrics(np.concatenate(maps[v]), masks))
            out[v][cat] = metrics
        if keep_scores:
            scores_out[cat] = {"labels": labels, **{v: scores[v] for v in VARIANTS}}
    return {"metrics": out, "scores": scores_out, "seconds": time.perf_counter() - t0,
            "images_per_s": len(test) / (time.perf_counter() - t0), "blends": lams}


def fit_variants(spec: dict[str, Any]) -> dict[str, Any]:
    """Child process: one timed CostFilter-AD fit on ``spec["data"]``, then every variant's metrics."""
    from ..api import Detector
    from ..data import split_of
    from .common import load_samples

    cfg = DetectorConfig.from_dict(spec["config"])
    samples = load_samples(spec["data"])
    t0 = time.perf_counter()
    det = Detector(cfg, progress=False).fit(samples)
    fit_s = time.perf_counter() - t0
    rss_fit = peak_rss_mb()
    ev = evaluate_variants(det, split_of(samples, "test"))
    return {"fit_s": fit_s, "stages_s": det.state.timings, "training": det.state.training.to_dict(),
            "peak_rss_fit_mb": rss_fit, "peak_rss_mb": peak_rss_mb(), **ev}


def run_costfilter(json_out: Path, figures: Path, *, masked_root: Path | None, budget_s: float,
                   elpv_budget_s: float, seed: int = 0, force: bool = False,
                   config: DetectorConfig | None = None, elpv: bool = True) -> dict[str, Any]:
    """All runs; prints tables; writes JSON and the score-distribution figure."""
    from .masked import find_categories

    runs: dict[str, Any] = {}
    datasets: list[tuple[str, dict[str, Any], float]] = []
    if elpv:
        datasets.append(("elpv", {"data": "elpv"}, elpv_budget_s))
    if masked_root is not None:
        for d in find_categories(Path(masked_root)):
            datasets.append((d.name, {"data": [str(d)]}, budget_s))
    for name, data, budget in datasets:
        for base in ("memory", "reconstruction"):
            cfg = DetectorConfig.from_dict((config or DetectorConfig()).to_dict())
            cfg.method, cfg.seed = "costfilter", seed
            cfg.costfilter.base = base
            cfg.costfilter.training.steps = 100000  # the wall-clock budget decides
            cfg.costfilter.training.time_budget_s = budget
            tag = f"{name}-{base}"
            runs.setdefault(name, {})[base] = run_child("costfilter", {**data, "config": cfg.to_dict(), "tag": tag}, tag)
    payload = {"benchmark": "costfilter", "seed": seed, "budget_s": budget_s, "elpv_budget_s": elpv_budget_s,
               "config": (config or DetectorConfig()).to_dict(), "runs": runs}
    plot_score_distributions(runs, figures / "costfilter_scores.png")
    write_json(json_out, payload, force)
    print(costfilter_tables(payload))
    return payload


def costfilter_tables(p: dict[str, Any]) -> str:
    """Per data set and base: base alone vs + CostFilter (vs filter alone), per category."""
    rows = []
    for data, by_base in p["runs"].items():
        for base, r in by_base.items():
            for cat in r["metrics"]["base"]:
                for v in VARIANTS:
                    m = r["metrics"][v][cat]
                    label = {"base": f"{base} base alone", "filtered": f"{base} + CostFilter (λ = {r['blends']['filtered']:g})",
                             "filter_only": f"{base}: filter alone"}[v]
                    rows.append([f"{data}/{cat}" if cat != data else data, label]
                                + [m.get(k) for k in METRIC_LABELS]
                                + ([f"{r['stages_s'].get('train_s', 0):.0f} ({r['training']['steps']} steps)",
                                    f"{r['images_per_s']:.1f}", f"{r['peak_rss_mb']:.0f}"] if v == "filtered" else [None] * 3))
    return format_table(["data", "model"] + [METRIC_LABELS[k] for k in METRIC_LABELS]
                        + ["filter train s", "test images/s", "peak RSS MB"], rows)


def plot_score_distributions(runs: dict[str, Any], path: Path) -> None:
    """Histograms of test image scores, normal vs anomalous, base alone vs + CostFilter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(data, base, r) for data, by_base in runs.items() for base, r in by_base.items()]
    fig, axes = plt.subplots(len(panels), 2, figsize=(8, 2.2 * len(panels)), squeeze=False)
    for row, (data, base, r) in zip(axes, panels):
        for ax, variant in zip(row, ("base", "filtered")):
            labels = np.concatenate([np.asarray(s["labels"]) for s in r["scores"].values()])
            scores = np.concatenate([np.asarray(s[variant]) for s in r["scores"].values()])
            # Per-panel min-max so the two panels compare by overlap, not by scale.
            z = (scores - scores.min()) / (np.ptp(scores) or 1.0)
            bins = np.linspace(0, 1, 40)
            ax.hist(z[labels == 0], bins, alpha=0.6, density=True, label="normal")
            ax.hist(z[labels == 1], bins, alpha=0.6, density=True, label="anomalous")
            name = "base alone" if variant == "base" else f"+ CostFilter (λ={r['blends']['filtered']:g})"
            ax.set_title(f"{data}, {base} base: {name}", fontsize=8)
            ax.tick_params(labelsize=6)
        row[0].legend(fontsize=6)
    fig.suptitle("Test image scores (min-max per panel): normal vs anomalous", fontsize=9)
    fig.tight_layout()
    from ..atomic import write_with

    path.parent.mkdir(parents=True, exist_ok=True)
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)

