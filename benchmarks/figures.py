"""Benchmark pictures: per-category grids of best/worst cases and ROC / PRO curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from costfilter.data import read_image
from costfilter.data.imageio import resize_image
from costfilter.metrics import binary_curve, pro_curve
from costfilter.viz import overlay


def save_figure(fig: Any, path: Path, dpi: int = 100) -> None:
    """Write a matplotlib figure as PNG atomically, creating its folder."""
    from costfilter.atomic import write_with

    path.parent.mkdir(parents=True, exist_ok=True)
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))


def category_figures(det: Any, ev: Any, cat: str, folder: Path, tag: str) -> None:
    """``<tag>_grid.png``: per defect type the best- and worst-scored image (overlay, ground truth
    in green, predicted region in white at the calibrated pixel threshold); ``<tag>_curves.png``:
    image ROC and pixel PRO curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = [i for i, r in enumerate(ev.samples) if r.category == cat]
    recs = [ev.samples[i] for i in idx]
    maps, masks = ev.maps.get(cat), ev.masks.get(cat)
    size = det.config.features.image_size
    picks: list[tuple[str, int]] = []
    for t in sorted({r.defect for r in recs}):
        members = sorted((j for j, r in enumerate(recs) if r.defect == t), key=lambda j: recs[j].score)
        if t == "good":
            picks += [("good, highest score", members[-1]), ("good, lowest score", members[0])]
        else:
            picks += [(f"{t}, best found", members[-1]), (f"{t}, worst found", members[0])]
    if maps is not None:
        cols = min(len(picks), 6)
        rows = -(-len(picks) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.6 * rows), squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, (title, j) in zip(axes.ravel(), picks):
            img = resize_image(read_image(recs[j].path), size)
            ax.imshow(overlay(img, maps[j], det.thresholds.pixel, gt_mask=masks[j]))
            ax.set_title(f"{title}\nscore {recs[j].score:.2f}", fontsize=7)
        fig.suptitle(f"{cat}: green = ground truth, white = predicted region (calibrated threshold)", fontsize=8)
        fig.tight_layout()
        save_figure(fig, folder / f"{tag}_grid.png")
        plt.close(fig)
    fig, axes = plt.subplots(1, 2 if maps is not None else 1, figsize=(8 if maps is not None else 4, 3.6), squeeze=False)
    c = binary_curve(np.array([r.score for r in recs]), np.array([r.label for r in recs]))
    axes[0, 0].plot(np.r_[0, c.fps / max(c.negatives, 1)], np.r_[0, c.tps / max(c.positives, 1)])
    axes[0, 0].plot([0, 1], [0, 1], ls=":", c="grey")
    axes[0, 0].set(xlabel="false-positive rate (good images)", ylabel="true-positive rate", title=f"{cat}: image ROC")
    if maps is not None:
        fpr, pro = pro_curve(maps, masks)
        axes[0, 1].plot(fpr, pro)
        axes[0, 1].axvline(0.3, ls="--", c="grey", lw=0.8)
        axes[0, 1].set(xlabel="pixel false-positive rate", ylabel="per-region overlap", title=f"{cat}: PRO curve",
                       xlim=(0, 1))
    fig.tight_layout()
    save_figure(fig, folder / f"{tag}_curves.png")
    plt.close(fig)
