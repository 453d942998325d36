"""Memory-bank benchmark: bank size and sampler on ELPV (the speed rule behind the default bank),
approximations vs exact greedy, scaling, and with --data the bank size at pixel level and the two
image scores on every masked category under that root.

    python -m benchmarks.memory_bank [--data ../shared/data] [--quick] [--force]

Writes benchmarks/results/memory_bank.json and two PNGs under docs/figures/.

Memory-bank trade-offs: bank size and sampler on ELPV (the speed rule behind the default),
approximations vs exact greedy, scaling with the number of training images, bank size at pixel
level on masked categories, and the two image scores. Each configuration runs in its own
process so that its time and peak RSS are its own. Prints tables, writes JSON and two PNG plots.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from costfilter.config import DetectorConfig
from costfilter.tables import METRIC_LABELS, format_table

from .common import run_child, write_json
from .figures import save_figure

SCORING_IMAGES = 320
#: the speed rule: the default bank is the largest whose scoring keeps this share of the backbone's rate
SPEED_RULE = 0.75
#: bank_size that holds every patch
ALL = 10**9

# ELPV trade-off: bank sizes around the default, random at the default size, PatchCore's 1 % coreset.
TRADEOFF = [
    {"sampler": "greedy", "bank_size": 1024},
    {"sampler": "greedy", "bank_size": 2048},
    {"sampler": "greedy", "bank_size": 4096},
    {"sampler": "greedy", "bank_size": 8192},
    {"sampler": "greedy", "bank_size": 16384},
    {"sampler": "random", "bank_size": 4096},
    {"sampler": "greedy", "ratio": 0.01},
]
# On 100 training images exact greedy (full 152-d distances over every patch) is affordable.
EXACTNESS = [
    {"sampler": "greedy", "ratio": 0.01, "n_train": 100, "projection_dim": 0, "presample_factor": 0,
     "half_precision": False},
    {"sampler": "greedy", "ratio": 0.01, "n_train": 100, "projection_dim": 0, "presample_factor": 0},
    {"sampler": "greedy", "ratio": 0.01, "n_train": 100, "projection_dim": 128, "presample_factor": 0},
    {"sampler": "greedy", "ratio": 0.01, "n_train": 100, "projection_dim": 0, "presample_factor": 10},
    {"sampler": "greedy", "ratio": 0.01, "n_train": 100, "projection_dim": 128, "presample_factor": 10},
    {"sampler": "random", "ratio": 0.01, "n_train": 100},
]
SCALING_SIZES = [100, 300, 1000, None]
# Pixel level: bank sizes from small to every patch, on each masked category.
PIXEL = [{"bank_size": 1024}, {"bank_size": 4096}, {"bank_size": 10240}, {"ratio": 0.01}, {"ratio": 0.1},
         {"bank_size": ALL}]


def _config(spec: dict[str, Any]) -> dict[str, Any]:
    cfg = DetectorConfig(seed=spec.get("seed", 0))
    m = cfg.memory
    if "ratio" in spec:
        m.coreset_ratio, m.min_bank_size = spec["ratio"], 0
    m.bank_size = spec.get("bank_size", m.bank_size)
    m.sampler = spec.get("sampler", m.sampler)
    m.projection_dim = spec.get("projection_dim", m.projection_dim)
    m.presample_factor = spec.get("presample_factor", m.presample_factor)
    m.half_precision = spec.get("half_precision", m.half_precision)
    return cfg.to_dict()


def spec_name(s: dict[str, Any]) -> str:
    """A row label: ``greedy 4096``, ``greedy 1 %``, ``every patch`` (+ approximations)."""
    size = ("every patch" if s.get("bank_size") == ALL else f"{100 * s['ratio']:g} %" if "ratio" in s
            else f"{s['bank_size']}" if "bank_size" in s else "default")
    extra = []
    if "projection_dim" in s:
        extra.append(f"proj {s['projection_dim'] or 'exact'}")
    if "presample_factor" in s:
        extra.append(f"presample {s['presample_factor'] or 'none'}")
    if s.get("half_precision") is False:
        extra.append("float32 candidates")
    return (f"{s.get('sampler', 'greedy')} " if size != "every patch" else "") + size + (
        f" ({', '.join(extra)})" if extra else "")


def _run(spec: dict[str, Any], data: Any, **kw: Any) -> dict[str, Any]:
    if spec.get("n_train"):
        kw["n_train"] = spec["n_train"]
    out = run_child("fit_evaluate", {"config": _config(spec), "data": data, **kw}, f"{spec_name(spec)} {kw}")
    out["spec"] = spec
    return out


def run_memory_bank(json_out: Path, figures: Path, *, masked_root: Path | None = None, quick: bool = False,
                    force: bool = False) -> dict[str, Any]:
    """Run the studies; ``quick`` runs a reduced set (for a smoke test); ``masked_root`` adds the
    pixel-level and image-score studies on its categories."""
    from .masked import find_categories

    tradeoff = TRADEOFF[:2] if quick else TRADEOFF
    exactness = EXACTNESS[:2] if quick else EXACTNESS
    sizes = SCALING_SIZES[:2] if quick else SCALING_SIZES
    print("trade-off runs:", file=sys.stderr)
    t_rows = [_run(s, "elpv", speed=SCORING_IMAGES) for s in tradeoff]
    print("exactness runs:", file=sys.stderr)
    e_rows = [_run(s, "elpv") for s in exactness]
    print("scaling runs:", file=sys.stderr)
    s_rows = [_run({"n_train": n}, "elpv", eval=False, speed=SCORING_IMAGES) for n in sizes]
    payload: dict[str, Any] = {"benchmark": "memory_bank", "seed": 0, "default_bank_size": DetectorConfig().memory.bank_size,
                               "speed_rule": SPEED_RULE, "tradeoff": t_rows, "exactness": e_rows, "scaling": s_rows}
    if masked_root is not None:
        cats = find_categories(Path(masked_root))
        pixel = PIXEL[:2] if quick else PIXEL
        print("pixel-level runs:", file=sys.stderr)
        payload["pixel"] = {d.name: [_run(s, [str(d)], speed=64) for s in pixel] for d in cats}
        print("image-score runs:", file=sys.stderr)
        payload["image_scores"] = {name: _run({}, data, image_scores=True, tag=name)["image_scores"]
                                   for name, data in [("elpv", "elpv")] + [(d.name, [str(d)]) for d in cats]}
    payload["scaling_slopes"] = plot_scaling(s_rows, figures / "memory_bank_scaling.png")
    plot_tradeoff(t_rows, figures / "memory_bank_tradeoff.png")
    write_json(json_out, payload, force)
    print(memory_bank_tables(payload))
    return payload


def speed_rule_choice(rows: list[dict[str, Any]]) -> int | None:
    """The largest greedy bank_size among ``rows`` whose scoring keeps :data:`SPEED_RULE` of the backbone."""
    ok = [r["bank_size"] for r in rows if r["spec"].get("sampler") == "greedy" and "bank_size" in r["spec"]
          and r["throughput"]["model_over_backbone"] >= SPEED_RULE]
    return max(ok) if ok else None


def memory_bank_tables(p: dict[str, Any]) -> str:
    """The README tables."""
    t = format_table(
        ["bank (ELPV, 1,055 fit images)", "rows", "I-AUROC", "fit s", "fit / backbone", "coreset s",
         "images/s (batch 32)", "backbone images/s", "ratio", "peak RSS MB"],
        [[spec_name(r["spec"]), r["bank_size"], r["pooled_image"]["image_auroc"], f"{r['fit_s']:.1f}",
          f"{r['fit_over_backbone']:.2f}×", f"{r['stages_s']['coreset_s']:.1f}",
          f"{r['throughput']['model_images_per_s']:.1f}", f"{r['throughput']['backbone_images_per_s']:.1f}",
          f"{r['throughput']['model_over_backbone']:.2f}", f"{r['peak_rss_mb']:.0f}"] for r in p["tradeoff"]])
    choice = speed_rule_choice(p["tradeoff"])
    t += (f"\n\nSpeed rule (scoring ≥ {p['speed_rule']}× the backbone alone): largest passing greedy bank in this "
          f"run: {choice}; the default is {p['default_bank_size']}.")
    e = format_table(
        ["coreset on 100 fit images (1 %)", "rows", "I-AUROC", "coreset s"],
        [[spec_name(r["spec"]), r["bank_size"], r["pooled_image"]["image_auroc"], f"{r['stages_s']['coreset_s']:.2f}"]
         for r in p["exactness"]])
    s = format_table(
        ["fit images", "bank", "fit s", "fit / backbone", "scoring images/s", "peak RSS MB"],
        [[r["n_train"], r["bank_size"], f"{r['fit_s']:.1f}", f"{r['fit_over_backbone']:.2f}×",
          f"{r['throughput']['model_images_per_s']:.1f}", f"{r['peak_rss_mb']:.0f}"] for r in p["scaling"]])
    slopes = p["scaling_slopes"]
    s += (f"\n\nlog-log slopes vs fit images: fit time {slopes['fit_s']:.2f}, scoring time per image "
          f"{slopes['score_s_per_image']:.2f}, peak RSS {slopes['peak_rss_mb']:.2f}")
    parts = [t, e, s]
    if "pixel" in p:
        keys = ["image_auroc", "pixel_auroc", "pixel_ap", "aupro"]
        rows = []
        for cat, runs in p["pixel"].items():
            for r in runs:
                m = r["per_category"][cat]
                rows.append([cat, spec_name(r["spec"]), r["bank_size"]] + [m[k] for k in keys]
                            + [f"{r['throughput']['model_images_per_s']:.1f}",
                               f"{r['throughput']['model_over_backbone']:.2f}", f"{r['fit_s']:.1f}"])
        parts.append(format_table(["category", "bank", "rows"] + [METRIC_LABELS[k] for k in keys]
                                  + ["images/s", "ratio to backbone", "fit s"], rows))
    if "image_scores" in p:
        rows = []
        for name, st in p["image_scores"].items():
            rows.append([name, st["validation"]["top_percent"], st["validation"]["reweighted_max"],
                         " / ".join(f"{v['top_percent']:.3f}" for v in st["test"].values()),
                         " / ".join(f"{v['reweighted_max']:.3f}" for v in st["test"].values())])
        mean = {k: float(np.mean([st["validation"][k] for st in p["image_scores"].values()]))
                for k in ("top_percent", "reweighted_max")}
        rows.append(["mean", mean["top_percent"], mean["reweighted_max"], None, None])
        parts.append(format_table(["data", "validation I-AUROC: top 1 % mean", "validation: re-weighted max",
                                   "test I-AUROC: top 1 % mean", "test: re-weighted max"], rows))
    return "\n\n".join(parts)


def plot_scaling(rows: list[dict[str, Any]], path: Path) -> dict[str, float]:
    """Log-log plot of fit time, scoring time and peak RSS vs fit images; returns fitted slopes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.array([r["n_train"] for r in rows], dtype=float)
    series = {
        "fit_s": np.array([r["fit_s"] for r in rows]),
        "score_s_per_image": np.array([1.0 / r["throughput"]["model_images_per_s"] for r in rows]),
        "peak_rss_mb": np.array([r["peak_rss_mb"] for r in rows]),
    }
    slopes = {k: float(np.polyfit(np.log(n), np.log(v), 1)[0]) for k, v in series.items()}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (k, v) in zip(axes, series.items()):
        ax.loglog(n, v, "o-")
        ax.set_xlabel("normal training images")
        ax.set_title(f"{k}  (slope {slopes[k]:.2f})", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("Memory bank scaling on ELPV (default bank; this 2-core CPU)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return slopes


def plot_tradeoff(rows: list[dict[str, Any]], path: Path) -> None:
    """I-AUROC vs scoring throughput, one point per bank configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        s = r["spec"]
        marker = "o" if s.get("sampler", "greedy") == "greedy" else "s"
        auroc = r["pooled_image"]["image_auroc"]
        ax.scatter(r["throughput"]["model_images_per_s"], auroc, marker=marker)
        ax.annotate(spec_name(s), (r["throughput"]["model_images_per_s"], auroc),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
    bb = rows[0]["throughput"]["backbone_images_per_s"]
    ax.axvline(SPEED_RULE * bb, ls="--", c="grey", lw=0.8)
    ax.text(SPEED_RULE * bb, ax.get_ylim()[0], f" {SPEED_RULE} × backbone", fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("scoring images/s, batch 32 (log)")
    ax.set_ylabel("ELPV I-AUROC")
    ax.set_title("Bank size trade-off (ELPV)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/memory_bank.json"))
    ap.add_argument("--figures", type=Path, default=Path("docs/figures"))
    # a str, not a Path: Path('') is '.', so '' could not mean "skip"
    ap.add_argument("--data", default="../shared/data", help="root of masked categories ('' to skip)")
    ap.add_argument("--quick", action="store_true", help="a reduced set of runs (smoke test)")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--resume", action="store_true", help="reuse runs finished by an interrupted invocation")
    a = ap.parse_args()
    if a.resume:
        from . import common

        common.CHILD_CACHE = Path("benchmarks/results/tmp-runs")
    run_memory_bank(a.json, a.figures, masked_root=Path(a.data) if a.data else None, quick=a.quick, force=a.force)
