"""ELPV image-level benchmark (issue 2).

    python -m benchmarks.elpv [--force]

Writes benchmarks/results/elpv.json and docs/figures/elpv_heatmaps.png.

ELPV benchmark (image level): fit on a seeded 70 % of functional cells, test on the other
functional cells against all defective cells. Same split and backbone as the anomalib PatchCore
figures in ``shared/design/peer-measurements.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from costfilter.api import Detector
from costfilter.config import DetectorConfig
from costfilter.data import load_dataset, read_image, split_of
from costfilter.metrics import image_metrics
from costfilter.provenance import peak_rss_mb
from costfilter.tables import format_table

from .common import load_tensors, throughput, write_json

ANOMALIB_PATCHCORE = {"image_auroc": 0.883, "fit_s": 946.0, "peak_rss_mb": 6.7 * 1024, "images_per_s": 31.0,
                      "backbone_images_per_s": 40.0, "coreset_ratio": 0.001}


def run_elpv(json_out: Path, *, heatmaps: Path | None = None, coreset_ratio: float | None = None, seed: int = 0,
             progress: bool = True, force: bool = False, config: DetectorConfig | None = None) -> dict:
    """Run the benchmark, print its table, write JSON (and heat-maps); returns the payload."""
    cfg = config or DetectorConfig(seed=seed)
    if coreset_ratio is not None:
        cfg.memory.coreset_ratio = coreset_ratio
    samples = load_dataset("elpv", "elpv")
    train, test = split_of(samples, "train"), split_of(samples, "test")
    t0 = time.perf_counter()
    det = Detector(cfg, progress=progress).fit(samples)
    fit_s = time.perf_counter() - t0
    fit_rss = peak_rss_mb()
    ev = det.evaluate(samples)
    pooled = image_metrics([r.score for r in ev.samples], [r.label for r in ev.samples])
    speed = throughput(det, load_tensors([s.path for s in test[:320]], cfg.features.image_size))
    payload = {
        "benchmark": "elpv",
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "split": {"train_normal": len(train), "test_normal": sum(s.label == 0 for s in test),
                  "test_defective": sum(s.label == 1 for s in test)},
        "metrics": pooled,
        "per_type": ev.per_category,
        "fit_s": fit_s,
        "stages_s": det.state.timings,
        "bank_size": det.state.bank_size,
        "peak_rss_fit_mb": fit_rss,
        "test_end_to_end_s": ev.seconds,
        "test_images_per_s_with_decoding": ev.images_per_second,
        "throughput": speed,
        "thresholds": {"image": det.thresholds.image, "calibration_images": det.thresholds.n_calibration},
        "decisions_on_test": _decision_rates(det, ev),
        "anomalib_patchcore_same_machine": ANOMALIB_PATCHCORE,
    }
    write_json(json_out, payload, force)
    print(elpv_table(payload))
    if heatmaps is not None:
        path = write_heatmap_grid(det, ev, heatmaps)
        print(f"heat-maps: {path}")
    print(f"results: {json_out}")
    return payload


def _decision_rates(det: Detector, ev) -> dict[str, float]:
    t = det.thresholds.image
    normal = np.array([r.score for r in ev.samples if r.label == 0])
    bad = np.array([r.score for r in ev.samples if r.label == 1])
    return {"false_reject_rate_good": float((normal > t).mean()), "detection_rate_defective": float((bad > t).mean())}


def elpv_table(p: dict) -> str:
    """The README table: ours vs anomalib PatchCore on this machine."""
    a = p["anomalib_patchcore_same_machine"]
    s = p["throughput"]
    memory = p["config"]["memory"]
    ours = (f"ratio {memory['coreset_ratio']:g}" if memory.get("coreset_ratio") is not None
            else f"at most {memory.get('bank_size')} rows")
    rows = [
        ["I-AUROC", p["metrics"]["image_auroc"], a["image_auroc"]],
        ["I-AP", p["metrics"]["image_ap"], None],
        ["I-F1max", p["metrics"]["image_f1max"], None],
        ["I-AUROC mono / poly", f"{p['per_type']['mono']['image_auroc']:.3f} / {p['per_type']['poly']['image_auroc']:.3f}",
         "0.906 / 0.865"],
        ["bank (rows)", f"{ours} ({p['bank_size']})", f"ratio {a['coreset_ratio']:g} (1080)"],
        ["fit, wall s", f"{p['fit_s']:.1f}", f"{a['fit_s']:.0f}"],
        ["  features / coreset / calibration s",
         f"{p['stages_s']['features_s']:.1f} / {p['stages_s']['coreset_s']:.1f} / {p['stages_s']['calibration_s']:.1f}",
         "176 / 769 / —"],
        ["peak RSS during fit, MB", f"{p['peak_rss_fit_mb']:.0f}", f"{a['peak_rss_mb']:.0f}"],
        ["scoring, batch 32, images/s", f"{s['model_images_per_s']:.1f}", f"{a['images_per_s']:.0f}"],
        ["backbone alone, batch 32, images/s", f"{s['backbone_images_per_s']:.1f}", f"{a['backbone_images_per_s']:.0f}"],
        ["model / backbone throughput", f"{s['model_over_backbone']:.2f}", f"{a['images_per_s'] / a['backbone_images_per_s']:.2f}"],
        ["latency, batch 1, ms", f"{s['latency_batch1_ms']:.1f}", None],
    ]
    return format_table(["ELPV (1,055 fit / 453 good + 715 defective test)", "costfilter memory bank", "anomalib 2.7 PatchCore"], rows)


def write_heatmap_grid(det: Detector, ev, folder: Path) -> Path:
    """A grid PNG: the most and least anomalous defective and good test cells, with overlays."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from costfilter.viz import overlay

    folder.mkdir(parents=True, exist_ok=True)
    recs = sorted(ev.samples, key=lambda r: r.score)
    picks = ([r for r in recs if r.label == 1][-4:][::-1] + [r for r in recs if r.label == 1][:2]
             + [r for r in recs if r.label == 0][-2:][::-1] + [r for r in recs if r.label == 0][:2])
    preds = det.predict([r.path for r in picks])
    fig, axes = plt.subplots(2, len(picks), figsize=(2.0 * len(picks), 4.4))
    for j, (r, p) in enumerate(zip(picks, preds)):
        img = read_image(r.path)
        axes[0, j].imshow(img)
        axes[1, j].imshow(overlay(img, p.map_at_original_size(), det.thresholds.pixel))
        kind = "defective" if r.label else "good"
        axes[0, j].set_title(f"{kind}\nscore {p.score:.2f}\n{p.decision}", fontsize=7)
        for ax in axes[:, j]:
            ax.axis("off")
    fig.suptitle("ELPV test cells: top row input, bottom row heat-map (white outline = predicted defect region)", fontsize=8)
    fig.tight_layout()
    path = folder / "elpv_heatmaps.png"
    from .figures import save_figure

    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/elpv.json"))
    ap.add_argument("--figures", type=Path, default=Path("docs/figures"))
    ap.add_argument("--coreset-ratio", type=float, default=None, help="share of patches in the bank (default: config's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run_elpv(a.json, heatmaps=a.figures, coreset_ratio=a.coreset_ratio, seed=a.seed, progress=not a.quiet,
             force=a.force)
