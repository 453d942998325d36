"""Memory-bank trade-offs on ELPV: coreset ratio × sampler, approximations vs exact greedy, and
scaling with the number of training images. Each configuration runs in its own process so that
its peak RSS is its own. Prints tables, writes JSON and two PNG plots."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..report import format_table, peak_rss_mb
from .common import run_child, write_json

SCORING_IMAGES = 320


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from ..api import Detector
    from ..config import DetectorConfig
    from ..data import load_dataset, split_of
    from ..metrics import image_metrics
    from .common import load_tensors, throughput

    cfg = DetectorConfig(seed=spec.get("seed", 0))
    cfg.memory.coreset_ratio = spec["ratio"]
    cfg.memory.sampler = spec["sampler"]
    cfg.memory.projection_dim = spec.get("projection_dim", cfg.memory.projection_dim)
    cfg.memory.presample_factor = spec.get("presample_factor", cfg.memory.presample_factor)
    cfg.memory.half_precision = spec.get("half_precision", cfg.memory.half_precision)
    samples = load_dataset("elpv", "elpv")
    train, test = split_of(samples, "train"), split_of(samples, "test")
    if spec.get("n_train"):
        order = np.random.default_rng(cfg.seed).permutation(len(train))[: spec["n_train"]]
        train = [train[i] for i in sorted(order)]
    t0 = time.perf_counter()
    det = Detector(cfg, progress=False).fit(train)
    out: dict[str, Any] = {"spec": spec, "fit_s": time.perf_counter() - t0, "stages_s": det.state["timings"],
                           "n_train": len(train), "bank_size": det.state["bank_size"],
                           "bank_mb": det.model.memory.bank.numel() * 4 / 1e6}
    out["peak_rss_fit_mb"] = peak_rss_mb()
    if spec.get("eval", True):
        ev = det.evaluate(test)
        out["image_auroc"] = image_metrics([r.score for r in ev.samples], [r.label for r in ev.samples])["image_auroc"]
        out["test_s"] = ev.seconds
    imgs = load_tensors([s.path for s in test[:SCORING_IMAGES]], cfg.features.image_size)
    out["throughput"] = throughput(det, imgs)
    out["peak_rss_mb"] = peak_rss_mb()
    out["torch_threads"] = torch.get_num_threads()
    return out


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    return run_child("costfilter.bench.memory_bank", spec, str(spec))


TRADEOFF = [
    {"sampler": "greedy", "ratio": 0.001},
    {"sampler": "random", "ratio": 0.001},
    {"sampler": "greedy", "ratio": 0.0025},
    {"sampler": "greedy", "ratio": 0.01},
    {"sampler": "random", "ratio": 0.01},
]
# 10 %: 97 k centres. Scoring the test split against such a bank takes ~20 min per row on this
# CPU, so these rows run only with --with-10pct. Greedy uses both approximations tightened.
TRADEOFF_10PCT = [
    {"sampler": "greedy", "ratio": 0.1, "projection_dim": 32, "presample_factor": 2.0},
    {"sampler": "random", "ratio": 0.1},
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


def run_memory_bank(json_out: Path, figures: Path, *, default_ratio: float, quick: bool = False,
                    with_10pct: bool = False, force: bool = False) -> dict[str, Any]:
    """Run all three studies; ``quick`` runs a reduced set (for a smoke test)."""
    tradeoff = TRADEOFF[:2] if quick else TRADEOFF + (TRADEOFF_10PCT if with_10pct else [])
    exactness = EXACTNESS[:2] if quick else EXACTNESS
    sizes = SCALING_SIZES[:2] if quick else SCALING_SIZES
    print("trade-off runs:", file=sys.stderr)
    t_rows = [_run(s) for s in tradeoff]
    print("exactness runs:", file=sys.stderr)
    e_rows = [_run(s) for s in exactness]
    print("scaling runs:", file=sys.stderr)
    s_rows = [_run({"sampler": "greedy", "ratio": default_ratio, "n_train": n, "eval": False}) for n in sizes]
    payload = {"benchmark": "memory_bank", "seed": 0, "default_ratio": default_ratio, "tradeoff": t_rows,
               "exactness": e_rows, "scaling": s_rows}
    payload["scaling_slopes"] = plot_scaling(s_rows, figures / "memory_bank_scaling.png")
    plot_tradeoff(t_rows, figures / "memory_bank_tradeoff.png")
    write_json(json_out, payload, force)
    print(memory_bank_tables(payload))
    return payload


def memory_bank_tables(p: dict[str, Any]) -> str:
    """The three README tables."""
    def spec_name(s: dict[str, Any]) -> str:
        extra = []
        if "projection_dim" in s:
            extra.append(f"proj {s['projection_dim'] or 'exact'}")
        if "presample_factor" in s:
            extra.append(f"presample {s['presample_factor'] or 'none'}")
        if s.get("half_precision") is False:
            extra.append("float32 candidates")
        return f"{s['sampler']} {100 * s['ratio']:g} %" + (f" ({', '.join(extra)})" if extra else "")

    t = format_table(
        ["bank (ELPV, 1,055 fit images)", "centres", "bank MB", "I-AUROC", "fit s", "coreset s",
         "images/s (batch 32)", "backbone images/s", "ratio", "peak RSS MB"],
        [[spec_name(r["spec"]), r["bank_size"], f"{r['bank_mb']:.1f}", r["image_auroc"], f"{r['fit_s']:.1f}",
          f"{r['stages_s']['coreset_s']:.1f}", f"{r['throughput']['model_images_per_s']:.1f}",
          f"{r['throughput']['backbone_images_per_s']:.1f}", f"{r['throughput']['model_over_backbone']:.2f}",
          f"{r['peak_rss_mb']:.0f}"] for r in p["tradeoff"]])
    e = format_table(
        ["coreset on 100 fit images (1 %)", "centres", "I-AUROC", "coreset s"],
        [[spec_name(r["spec"]), r["bank_size"], r["image_auroc"], f"{r['stages_s']['coreset_s']:.2f}"]
         for r in p["exactness"]])
    s = format_table(
        ["fit images", "bank", "fit s", "scoring images/s", "peak RSS MB"],
        [[r["n_train"], r["bank_size"], f"{r['fit_s']:.1f}", f"{r['throughput']['model_images_per_s']:.1f}",
          f"{r['peak_rss_mb']:.0f}"] for r in p["scaling"]])
    slopes = p["scaling_slopes"]
    s += (f"\n\nlog-log slopes vs fit images: fit time {slopes['fit_s']:.2f}, scoring time per image "
          f"{slopes['score_s_per_image']:.2f}, peak RSS {slopes['peak_rss_mb']:.2f}")
    return f"{t}\n\n{e}\n\n{s}"


def _savefig(fig: Any, path: Path) -> None:
    from ..atomic import write_with

    path.parent.mkdir(parents=True, exist_ok=True)
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


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
    fig.suptitle("Memory bank scaling on ELPV (coreset ratio fixed; this 2-core CPU)", fontsize=10)
    fig.tight_layout()
    _savefig(fig, path)
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
        marker = "o" if s["sampler"] == "greedy" else "s"
        ax.scatter(r["throughput"]["model_images_per_s"], r["image_auroc"], marker=marker)
        ax.annotate(f"{s['sampler']} {100 * s['ratio']:g}%", (r["throughput"]["model_images_per_s"], r["image_auroc"]),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
    bb = rows[0]["throughput"]["backbone_images_per_s"]
    ax.axvline(0.75 * bb, ls="--", c="grey", lw=0.8)
    ax.text(0.75 * bb, ax.get_ylim()[0], " 0.75 × backbone", fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("scoring images/s, batch 32 (log)")
    ax.set_ylabel("ELPV I-AUROC")
    ax.set_title("Bank size trade-off (ELPV)", fontsize=10)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        print(json.dumps(_child(json.loads(sys.argv[2]))))
