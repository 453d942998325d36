"""A grid PNG of synthetic anomalies: what the filtering network is trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import write_with
from ..config import SynthesisConfig
from ..data import load_dataset, read_image, split_of
from ..data.imageio import resize_image
from ..viz import outline
from .batch import make_synthesizer


def preview_grid(data: Path, fmt: str, out: Path, *, textures: Path | None = None, count: int = 12,
                 size: int = 256, seed: int = 0, foreground: float | None = None) -> None:
    """Pairs of rows: synthetic anomaly images, and the same with the exact mask outlined in green."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [s for s in split_of(load_dataset(data, fmt), "train") if s.label == 0]
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(train), size=min(count, len(train)), replace=False)
    images = [resize_image(read_image(train[i].path), size) for i in picks]
    config = SynthesisConfig(texture_dir=str(textures) if textures else None, foreground_threshold=foreground)
    synth = make_synthesizer(config, np.stack(images), normal_fraction=0.0)  # what training uses
    cols = min(6, len(images))
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(2 * cols, 4.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for j, img in enumerate(images):
        aug, mask = synth(rng, img)
        shown = aug.copy()
        shown[outline(mask)] = (0, 255, 0)
        r, c = 2 * (j // cols), j % cols
        axes[r, c].imshow(aug)
        axes[r + 1, c].imshow(shown)
        axes[r + 1, c].set_title(f"mask {100 * mask.mean():.1f} %", fontsize=7)
    fig.suptitle("Synthetic anomalies (green: exact mask)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_with(out, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)
