"""CostFilter-AD benchmark: base alone vs base + CostFilter for both bases, an ablation of the
design choices, learning curves.

    python -m benchmarks.costfilter_ad [--budget 300] [--elpv-budget 600] [--data ../shared/data] [--force]

ELPV runs as two classes (mono, poly) through the class-aware adaptor; each masked category is
single-class. Training stops at the wall-clock budget (CPU). Writes
benchmarks/results/costfilter.json and docs/figures/costfilter_learning_curves.png.

CostFilter-AD benchmark: the base alone vs base + filtering network, for both bases, on ELPV
(mono and poly as two classes: the class-aware adaptor) and on masked MVTec-layout categories;
an ablation of the design choices; learning curves.

One fit per (data, base, variant). From one pass of the trained model over the test images,
every λ on the grid is scored (λ = 0 is the base alone, λ = 1 the filter alone), so the table
shows what the λ rule's choice gained or cost against every alternative. Each fit runs in its
own process.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from costfilter.atomic import write_text
from costfilter.config import DetectorConfig
from costfilter.provenance import peak_rss_mb
from costfilter.tables import METRIC_LABELS, format_table

from .common import run_child, write_json

KEYS = ("image_auroc", "pixel_ap", "aupro")
#: learning curves are scored on the test set at this size (reporting only, never for a choice)
CURVE_SIZE = 64


def _test_inputs(det: Any, test: list) -> dict[str, Any]:
    """Per category: the filter's inputs of every test image (backbone and base run once), labels,
    masks at the model size."""
    from costfilter.data import mask_at
    from costfilter.data.loader import iter_batches

    model, size = det.model, det.config.features.image_size
    out: dict[str, Any] = {}
    for cat in dict.fromkeys(s.category for s in test):
        items = [s for s in test if s.category == cat]
        vols, feats, inits, sizes = [], [], [], []
        for batch in iter_batches([s.path for s in items], size, 16):
            with torch.inference_mode():
                v, f, i = model.inputs(batch.images)
            vols.append(v.half())
            feats.append(f.half())
            inits.append(i)
            sizes += batch.sizes
        with_masks = any(s.label for s in items) and all(s.mask is not None for s in items if s.label)
        masks = np.stack([mask_at(s.mask, hw, size) for s, hw in zip(items, sizes)]) if with_masks else None
        out[cat] = {"volume": torch.cat(vols), "feats": torch.cat(feats), "init": torch.cat(inits),
                    "labels": [s.label for s in items], "masks": masks}
    return out


def _probabilities(model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    """The filter's anomalous probability ``(N, h, w)`` on cached inputs."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(inputs["init"]), 16):
            logits, _ = model.filter(inputs["volume"][i : i + 16].float(), inputs["feats"][i : i + 16].float(),
                                     inputs["init"][i : i + 16].unsqueeze(1))
            out.append(logits.softmax(1)[:, 1])
    return torch.cat(out)


def evaluate_lambdas(det: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """Per category and λ on the grid: image and pixel metrics of ``λ·filter + (1 − λ)·base``
    at the model size (λ = 0 is the base alone, 1 the filter alone)."""
    from costfilter.methods.costfilter.fit import LAMBDAS
    from costfilter.metrics import image_metrics, pixel_metrics

    model = det.model
    out: dict[str, Any] = {}
    for cat, inp in inputs.items():
        prob = model.scorer.upsample(_probabilities(model, inp))
        base = model.scorer.upsample(inp["init"])
        per: dict[str, Any] = {}
        for lam in LAMBDAS:
            maps, scores = [], []
            for i in range(0, len(prob), 32):
                m, s = model.scorer.finish(lam * prob[i : i + 32] + (1 - lam) * base[i : i + 32])
                maps.append(m.numpy())
                scores += s.tolist()
            metrics = image_metrics(scores, inp["labels"])
            if inp["masks"] is not None:
                metrics.update(pixel_metrics(np.concatenate(maps), inp["masks"]))
            per[str(lam)] = metrics
        out[cat] = per
    return out


def fit_variants(spec: dict[str, Any]) -> dict[str, Any]:
    """Child process: one timed CostFilter-AD fit, then every λ's test metrics, throughput against
    the backbone, and (``curve``) test AUPRO at each validation step's weights."""
    from costfilter.api import Detector
    from costfilter.data import split_of
    from costfilter.metrics import aupro

    from .common import load_samples, load_tensors, throughput

    cfg = DetectorConfig.from_dict(spec["config"])
    samples = load_samples(spec["data"])
    test = split_of(samples, "test")
    snapshots: list[tuple[int, dict[str, torch.Tensor]]] = []

    def observe(step: int, model: Any) -> None:
        snapshots.append((step, {k: v.clone() for k, v in model.filter.state_dict().items()}))

    t0 = time.perf_counter()
    det = Detector(cfg, progress=False).fit(samples, observer=observe if spec.get("curve") else None,
                                            resume=Path(spec["resume"]) if spec.get("resume") else None)
    fit_s = time.perf_counter() - t0
    if spec.get("save"):  # a filter other runs start from (the transfer study)
        det.save(spec["save"], force=True)
    training = det.state.training
    fitted = {"fit_s": fit_s, "stages_s": det.state.timings, "training": training.to_dict() if training else None,
              "blend": float(det.model.blend), "peak_rss_fit_mb": peak_rss_mb()}
    if not spec.get("evaluate", True):  # only the model was wanted
        return fitted
    t1 = time.perf_counter()
    inputs = _test_inputs(det, test)
    lambdas = evaluate_lambdas(det, inputs)
    test_s = time.perf_counter() - t1
    speed = throughput(det, load_tensors([s.path for s in test[:96]], cfg.features.image_size), batch=16)
    curve = []
    if snapshots:
        final = {k: v.clone() for k, v in det.model.filter.state_dict().items()}
        for step, state in snapshots:
            det.model.filter.load_state_dict(state)
            row: dict[str, Any] = {"step": step}
            for cat, inp in inputs.items():
                if inp["masks"] is None:
                    continue
                prob = F.interpolate(_probabilities(det.model, inp)[:, None], size=(CURVE_SIZE, CURVE_SIZE),
                                     mode="bilinear")[:, 0].numpy()
                masks = F.interpolate(torch.from_numpy(inp["masks"][:, None]).float(), size=(CURVE_SIZE, CURVE_SIZE),
                                      mode="nearest")[:, 0].numpy() > 0
                row[cat] = aupro(prob, masks)
            curve.append(row)
        det.model.filter.load_state_dict(final)
    return {**fitted, "lambdas": lambdas, "test_s": test_s, "throughput": speed, "curve": curve,
            "peak_rss_mb": peak_rss_mb(),
            "n_params": sum(p.numel() for p in det.model.filter.parameters())}


#: ablation variants: name → config overrides of the ``costfilter`` section (memory base)
ABLATION: dict[str, dict[str, Any]] = {
    "defaults (template order, K 16, b 8, 1 template, cross-fit, λ ≤ 0.1)": {},
    "sorted volume, K 8, 3 templates (first version)": {"volume": "sorted", "top_k": 8, "n_templates": 3},
    "no cross-fit": {"cross_fit": False},
    "K 8": {"top_k": 8},
    "K 64": {"top_k": 64},
    "b 16": {"widths": [16, 32, 32, 64]},
    "3 templates": {"n_templates": 3},
    "λ up to 1": {"max_blend": 1.0},
    "K 128": {"top_k": 128},
    "K 256": {"top_k": 256},
    "b 32": {"widths": [32, 64, 64, 128]},
    "15 minutes of training": {"budget_s": 900.0},
}


def child_config(base_cfg: DetectorConfig, seed: int, overrides: dict[str, Any], *, steps: int,
                 budget_s: float) -> dict[str, Any]:
    """The config dict of one benchmark fit: CostFilter-AD with ``overrides`` of its section,
    training bounded by ``steps`` and ``budget_s`` seconds."""
    cfg = base_cfg.to_dict()
    cfg["method"], cfg["seed"] = "costfilter", seed
    cfg["costfilter"] = dict(cfg["costfilter"], **overrides)
    cfg["costfilter"]["training"] = dict(cfg["costfilter"]["training"], steps=steps, time_budget_s=budget_s)
    return cfg


def _run_one(base_cfg: DetectorConfig, seed: int, data: Any, tag: str, budget: float, base: str,
             overrides: dict[str, Any], curve: bool) -> dict[str, Any]:
    """One fit + evaluation in a child; an override's ``budget_s`` replaces ``budget``."""
    overrides = dict(overrides)
    budget = overrides.pop("budget_s", budget)
    cfg = child_config(base_cfg, seed, dict(overrides, base=base), steps=100000, budget_s=budget)
    return run_child("costfilter", {"data": data, "config": cfg, "tag": tag, "curve": curve}, tag)


def extend_ablation(json_out: Path, masked_root: Path, category: str, variants: tuple[str, ...]) -> dict[str, Any]:
    """Add ablation ``variants`` on ``category`` to an existing ``costfilter.json``, with the
    payload's own config, seed and ablation budget (so the rows compare with its defaults row);
    each added row records the commit and environment it was measured in."""
    import json

    from costfilter.provenance import environment

    from .masked import find_categories

    unknown = set(variants) - set(ABLATION)
    if unknown:
        raise ValueError(f"unknown ablation variants {sorted(unknown)}; known: {list(ABLATION)}")
    p = json.loads(Path(json_out).read_text())
    cats = {d.name: d for d in find_categories(Path(masked_root))}
    base_cfg = DetectorConfig.from_dict(p["config"])
    for variant in variants:
        r = _run_one(base_cfg, p["seed"], [str(cats[category])], f"ablation {variant} {category}",
                     p["ablation_budget_s"], "memory", ABLATION[variant], False)
        r["measured_in"] = {k: v for k, v in environment().items() if k in ("git_commit", "cpu_count", "versions")}
        p["ablation"].setdefault(variant, {})[category] = r
    # The payload keeps the environment of its main runs; the added rows carry their own.
    write_text(Path(json_out), json.dumps(p, indent=2) + "\n")
    print(costfilter_tables(p))
    return p


def run_costfilter(json_out: Path, figures: Path, *, masked_root: Path | None, budget_s: float,
                   elpv_budget_s: float, seed: int = 0, force: bool = False, config: DetectorConfig | None = None,
                   elpv: bool = True, bases: tuple[str, ...] = ("memory", "reconstruction"),
                   ablation: tuple[str, ...] = (), ablation_budget_s: float = 120.0,
                   curves: tuple[str, ...] = (), variants: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The main runs (every data set × base, defaults), then the ablation variants on the masked
    categories named in ``ablation`` (memory base, ``ablation_budget_s`` each; ``variants``: a
    subset of :data:`ABLATION`); learning curves for the categories in ``curves``. Prints tables;
    writes JSON and figures."""
    from .masked import find_categories

    unknown = set(variants or ()) - set(ABLATION)
    if unknown:
        raise ValueError(f"unknown ablation variants {sorted(unknown)}; known: {list(ABLATION)}")
    base_cfg = config or DetectorConfig()
    cats = {d.name: d for d in find_categories(Path(masked_root))} if masked_root is not None else {}

    def one(data: Any, tag: str, budget: float, base: str, overrides: dict[str, Any], curve: bool) -> dict[str, Any]:
        return _run_one(base_cfg, seed, data, tag, budget, base, overrides, curve)

    runs: dict[str, Any] = {}
    datasets: list[tuple[str, Any, float]] = ([("elpv", "elpv", elpv_budget_s)] if elpv else [])
    datasets += [(name, [str(d)], budget_s) for name, d in cats.items()]
    for name, data, budget in datasets:
        for base in bases:
            runs.setdefault(name, {})[base] = one(data, f"{name}-{base}", budget, base, {},
                                                  name in curves and base == "memory")
    ablations: dict[str, Any] = {}
    for name in ablation:
        for variant, overrides in ABLATION.items():
            if variants is not None and variant not in variants:
                continue
            if not overrides and name in runs and "memory" in runs[name] and budget_s == ablation_budget_s:
                ablations.setdefault(variant, {})[name] = runs[name]["memory"]
                continue
            ablations.setdefault(variant, {})[name] = one([str(cats[name])], f"ablation {variant} {name}",
                                                          ablation_budget_s, "memory", overrides, False)
    payload = {"benchmark": "costfilter", "seed": seed, "budget_s": budget_s, "elpv_budget_s": elpv_budget_s,
               "ablation_budget_s": ablation_budget_s, "config": base_cfg.to_dict(), "runs": runs,
               "ablation": ablations}
    write_json(json_out, payload, force)
    if any(r.get("curve") for by_base in runs.values() for r in by_base.values()):
        plot_curves(runs, figures / "costfilter_learning_curves.png")
    print(costfilter_tables(payload))
    return payload


def _lam(r: dict[str, Any]) -> str:
    return f"{chosen_key(r)}".replace("0.", ".") if r["blend"] else "0"


def chosen_key(r: dict[str, Any]) -> str:
    """The key of a run's chosen λ in its ``lambdas`` tables: the grid value the model's float32
    blend stands for (0.1 is stored as 0.10000000149…)."""
    from costfilter.methods.costfilter.fit import LAMBDAS

    return str(min(LAMBDAS, key=lambda lam: abs(lam - r["blend"])))


def costfilter_tables(p: dict[str, Any]) -> str:
    """Main table (base alone / the λ rule's model / filter alone per data set and base), summary
    gains, then the ablation table."""
    keys = list(METRIC_LABELS)
    rows = []
    for data, by_base in p["runs"].items():
        for base, r in by_base.items():
            for cat, per in r["lambdas"].items():
                name = data if cat == data else f"{data}/{cat}"
                tp = r["throughput"]
                for label, lam in ((f"{base} base alone", "0.0"), (f"{base} + CostFilter (λ = {_lam(r)})", chosen_key(r)),
                                   (f"{base}: filter alone", "1.0")):
                    m = per[lam]
                    extra = ([f"{r['stages_s'].get('train_s', 0):.0f} ({r['training']['steps']} steps)",
                              f"{tp['model_images_per_s']:.1f} ({tp['model_over_backbone']:.2f}×)"]
                             if "CostFilter" in label else [None, None])
                    rows.append([name, label] + [m.get(k) for k in keys] + extra)
    out = [format_table(["data", "model"] + [METRIC_LABELS[k] for k in keys]
                        + ["filter train s (steps)", "test images/s (vs backbone)"], rows)]
    why = [f"* {data}, {base}: {r['training']['chosen'].get('why', '')}" for data, by_base in p["runs"].items()
           for base, r in by_base.items() if r.get("training")]
    out.append("λ chosen on validation (held-out good images + synthetic anomalies):\n\n" + "\n".join(why))
    summary = []
    for base in ("memory", "reconstruction"):
        masked = [(d, r[base]) for d, r in p["runs"].items() if base in r and d != "elpv"]
        if masked:
            gain = {k: float(np.mean([(per[chosen_key(r)].get(k, np.nan) - per["0.0"].get(k, np.nan))
                                      for _, r in masked for per in r["lambdas"].values()])) for k in KEYS}
            summary.append(f"{base} base, mean over the masked sets (CostFilter − base): "
                           + ", ".join(f"{METRIC_LABELS[k]} {v:+.3f}" for k, v in gain.items()))
    if summary:
        out.append("\n".join(f"* {s}" for s in summary))
    if p.get("ablation"):
        cats = sorted({c for by_cat in p["ablation"].values() for c in by_cat})
        arows = []
        for variant, by_cat in p["ablation"].items():
            row = [variant]
            for cat in cats:
                r = by_cat.get(cat)
                if r is None:
                    row += [None] * 7
                    continue
                chosen, alone = r["lambdas"][cat][chosen_key(r)], r["lambdas"][cat]["1.0"]
                row += [chosen.get("image_auroc"), chosen.get("pixel_ap"), chosen.get("aupro"), alone.get("aupro"),
                        f"{_lam(r)} ({r['training']['steps']} st)", f"{r['stages_s'].get('train_s', 0):.0f}",
                        f"{r['throughput']['model_over_backbone']:.2f}×"]
            arows.append(row)
        heads = ["variant (memory base)"]
        for cat in cats:
            heads += [f"{cat} I-AUROC", "P-AP", "AUPRO", "filter alone AUPRO", "λ (steps)", "train s",
                      "test speed vs backbone"]
        base_row = ["base alone"]
        for cat in cats:
            any_r = next(iter(p["ablation"].values()))[cat]
            per = any_r["lambdas"][cat]["0.0"]
            base_row += [per.get("image_auroc"), per.get("pixel_ap"), per.get("aupro")] + [None] * 4
        later = sorted({r["measured_in"]["git_commit"][:7] for by_cat in p["ablation"].values()
                        for r in by_cat.values() if "measured_in" in r})
        note = (f" Rows whose train s is larger ran with that budget. Rows added later were measured at commit "
                f"{', '.join(later)} with the same config, seed and machine." if later else "")
        out.append(f"**Ablation** ({p['ablation_budget_s']:.0f} s of training each unless the variant says "
                   f"otherwise; test numbers, reported only):{note}\n\n" + format_table(heads, [base_row] + arows))
    return "\n\n".join(out)


def plot_curves(runs: dict[str, Any], path: Path) -> None:
    """Validation score and (reporting only) test AUPRO against the training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(d, r["memory"]) for d, r in runs.items() if r.get("memory", {}).get("curve")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (data, r) in zip(axes[0], panels):
        val = r["training"]["validation"]
        ax.plot([v["step"] for v in val], [v["base_score"] for v in val], "o-", label="validation: base alone")
        ax.plot([v["step"] for v in val], [v["score"] for v in val], "s--", label="validation: best λ ≤ max")
        cats = [k for k in r["curve"][0] if k != "step"]
        for cat in cats:
            ax.plot([c["step"] for c in r["curve"]], [c[cat] for c in r["curve"]], "^-", label="test AUPRO, filter alone")
        ax.axvline(r["training"]["best_step"], ls=":", c="grey")
        ax.set_title(f"{data} (memory base)", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
        ax.tick_params(labelsize=7)
    fig.suptitle("CostFilter-AD learning curves (validation: mean of AUPRO and P-AP at 64 px)", fontsize=9)
    fig.tight_layout()
    from .figures import save_figure

    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/costfilter.json"))
    ap.add_argument("--figures", type=Path, default=Path("docs/figures"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--budget", type=float, default=300.0, help="training seconds per masked category and base")
    ap.add_argument("--elpv-budget", type=float, default=600.0, help="training seconds on ELPV per base")
    ap.add_argument("--ablation", default="welding,metal_plate", help="categories for the ablation ('' to skip)")
    ap.add_argument("--ablation-budget", type=float, default=120.0)
    ap.add_argument("--variants", default="", help="semicolon-separated subset of the ablation variants (names contain commas; default: all)")
    ap.add_argument("--curves", default="welding,metal_plate", help="data sets with a learning curve")
    ap.add_argument("--resume", action="store_true", help="reuse runs finished by an interrupted invocation")
    ap.add_argument("--add-ablation", metavar="CATEGORY", default=None,
                    help="only run --variants on CATEGORY and add them to the existing --json")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    if a.resume:
        from . import common

        common.CHILD_CACHE = Path("benchmarks/results/tmp-runs")
    split = lambda s: tuple(x for x in s.split(",") if x)
    variants = tuple(v.strip() for v in a.variants.split(";") if v.strip())
    if a.add_ablation:
        extend_ablation(a.json, a.data, a.add_ablation, variants)
        raise SystemExit(0)
    run_costfilter(a.json, a.figures, masked_root=a.data, budget_s=a.budget, elpv_budget_s=a.elpv_budget,
                   ablation=split(a.ablation), ablation_budget_s=a.ablation_budget, curves=split(a.curves),
                   variants=variants or None, force=a.force)
