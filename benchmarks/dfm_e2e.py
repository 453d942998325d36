"""DFM with its feature extractor trained (issue 20) vs frozen DFM and the memory bank.

    python -m benchmarks.dfm_e2e [--data ../shared/data] [--budget 150] [--no-elpv] [--force]

Each DFM variant trains for --budget seconds per data set (ELPV and every MVTec-layout category
under --data), keeping the step its validation split scores best. Writes
benchmarks/results/dfm_e2e.json and docs/figures/dfm_learning_curves.png.

DFM with its feature extractor trained (issue 20): frozen backbone vs the tapped stages trained
with the matching head, against the memory bank, on ELPV and every masked category.

Both DFM variants train for the same wall-clock budget and keep the step their validation split
(held-out good images + synthetic anomalies) scores best; nothing is chosen on test labels. Each
run is a child process. The learning-curve figure shows validation score against step.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from costfilter.config import DetectorConfig
from costfilter.tables import format_table

from .common import run_child, write_json
from .masked import find_categories

#: what each run keeps of its child's result
KEPT = ("per_category", "mean", "pooled_image", "fit_s", "test_s", "images_per_s", "training", "peak_rss_mb",
        "stages_s")
#: variant → (method, whether the backbone trains)
VARIANTS = {"memory bank": ("memory", False), "DFM, frozen backbone": ("dfm", False),
            "DFM, tapped stages trained": ("dfm", True)}


def run_dfm(json_out: Path, figures: Path, masked_root: Path, *, budget_s: float = 150.0, elpv: bool = True,
            seed: int = 0, force: bool = False) -> dict[str, Any]:
    """Every variant on every data set; prints the table, writes JSON and the curves figure."""
    sets = ([("elpv", "elpv")] if elpv else []) + [(c.name, [str(c)]) for c in find_categories(masked_root)]
    runs: dict[str, dict[str, Any]] = {}
    for name, data in sets:
        for variant, (method, train_backbone) in VARIANTS.items():
            cfg = DetectorConfig(method=method, seed=seed)
            cfg.dfm.train_backbone = train_backbone
            cfg.dfm.training.steps, cfg.dfm.training.time_budget_s = 100000, budget_s
            r = run_child("fit_evaluate", {"config": cfg.to_dict(), "data": data, "tag": f"{variant} {name}"},
                          f"{variant} / {name}")
            runs.setdefault(name, {})[variant] = {k: r.get(k) for k in KEPT}
    payload = {"benchmark": "dfm_e2e", "seed": seed, "budget_s": budget_s, "data_root": str(masked_root),
               "backbone_lr": DetectorConfig().dfm.backbone_lr, "runs": runs}
    write_json(json_out, payload, force)
    plot_dfm_curves(runs, figures / "dfm_learning_curves.png")
    print(dfm_table(payload))
    return payload


def dfm_table(p: dict[str, Any]) -> str:
    """README table: one row per data set and variant."""
    head = ["set", "variant", "I-AUROC", "P-AUROC", "AUPRO", "validation score (best step / steps)", "fit s",
            "test images/s"]
    rows = []
    for name, by_variant in p["runs"].items():
        for variant, r in by_variant.items():
            m = r["pooled_image"] if name == "elpv" else r["mean"]
            tr = r.get("training")
            val = (f"{max(v['score'] for v in tr['validation']):.3f} ({tr['best_step']} / {tr['steps']})"
                   if tr else "—")
            rows.append([name, variant, m["image_auroc"], r["mean"].get("pixel_auroc"), r["mean"].get("aupro"), val,
                         f"{r['fit_s']:.0f}", f"{r['images_per_s']:.1f}"])
    return format_table(head, rows) + (f"\n\nDFM trains for {p['budget_s']:.0f} s per set; the trained backbone "
                                       f"learns at {p['backbone_lr']} × the adapter's rate.")


def plot_dfm_curves(runs: dict[str, Any], path: Path) -> None:
    """Validation score (held-out good images + synthetic anomalies) against step, per set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import save_figure

    fig, axes = plt.subplots(1, len(runs), figsize=(3.6 * len(runs), 3.0), squeeze=False)
    for ax, (name, by_variant) in zip(axes[0], runs.items()):
        for variant, r in by_variant.items():
            tr = r.get("training")
            if tr:
                val = tr["validation"]
                ax.plot([v["step"] for v in val], [v["score"] for v in val], "o-", ms=3, label=variant)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.suptitle("DFM validation score (mean of image AUROC and pixel AP on synthetic anomalies)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/dfm_e2e.json"))
    ap.add_argument("--figures", type=Path, default=Path("docs/figures"))
    ap.add_argument("--budget", type=float, default=150.0, help="DFM training seconds per data set")
    ap.add_argument("--no-elpv", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run_dfm(a.json, a.figures, a.data, budget_s=a.budget, elpv=not a.no_elpv, seed=a.seed, force=a.force)
