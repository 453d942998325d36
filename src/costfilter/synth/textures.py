"""Where the content of a synthetic anomaly comes from.

The reference method uses the DTD texture dataset, which cannot be downloaded here; a user may
point :class:`FolderTextures` at DTD or any folder. The offline default,
:class:`ProceduralTextures`, needs nothing: colour Perlin noise, stripes and checkers, patches cut
from other normal images, each with colour and gamma jitter.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data.imageio import list_images, read_image, resize_image
from ..errors import DataError
from .perlin import perlin_noise


def jitter(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Random per-channel gain, brightness shift and gamma on a ``(H, W, 3)`` uint8 image."""
    x = img.astype(np.float32) / 255.0
    x = x * rng.uniform(0.6, 1.4, 3) + rng.uniform(-0.2, 0.2)
    x = np.clip(x, 0, 1) ** rng.uniform(0.5, 2.0)
    return (x * 255).astype(np.uint8)


class ProceduralTextures:
    """Offline texture source. ``normals``: ``(S, S, 3)`` uint8 normal images to cut patches from."""

    def __init__(self, normals: Sequence[np.ndarray] = ()):
        self.normals = list(normals)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """A ``(size, size, 3)`` uint8 texture."""
        kind = rng.integers(0, 4 if self.normals else 3)
        if kind == 0:  # colour noise at a random scale
            res = int(2 ** rng.integers(1, 6))
            img = np.stack([perlin_noise(rng, size, res) for _ in range(3)], -1) * 0.5 + 0.5
            img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        elif kind == 1:  # stripes at a random angle and period
            yy, xx = np.mgrid[0:size, 0:size]
            a, period = rng.uniform(0, np.pi), rng.uniform(3, 24)
            wave = 0.5 + 0.5 * np.sin((xx * np.cos(a) + yy * np.sin(a)) * 2 * np.pi / period)
            img = (wave[..., None] * rng.uniform(0, 255, 3) + (1 - wave[..., None]) * rng.uniform(0, 255, 3))
            img = img.astype(np.uint8)
        elif kind == 2:  # checker
            yy, xx = np.mgrid[0:size, 0:size]
            c = int(rng.integers(3, 20))
            board = ((yy // c + xx // c) % 2)[..., None]
            img = (board * rng.uniform(0, 255, 3) + (1 - board) * rng.uniform(0, 255, 3)).astype(np.uint8)
        else:  # another normal image, shifted and flipped: plausible material in the wrong place
            src = self.normals[rng.integers(len(self.normals))]
            img = np.roll(src, tuple(rng.integers(0, size, 2)), axis=(0, 1))[:: rng.choice([-1, 1]), :: rng.choice([-1, 1])]
            img = resize_image(np.ascontiguousarray(img), size)
        return jitter(rng, img)


class FolderTextures:
    """Textures from a folder of images (e.g. DTD), loaded lazily and resized to the sample size."""

    def __init__(self, folder: Path | str):
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"{folder}: texture folder not found")
        self.files = sorted(p for d in [folder, *sorted(x for x in folder.rglob("*") if x.is_dir())]
                            for p in list_images(d))
        if not self.files:
            raise DataError(f"{folder}: texture folder holds no images")

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """A ``(size, size, 3)`` uint8 texture."""
        return jitter(rng, resize_image(read_image(self.files[rng.integers(len(self.files))]), size))
