"""Normal image → (image with a synthetic anomaly, exact mask), or left normal half of the time."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .perlin import perlin_mask


class TextureSource(Protocol):
    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray: ...


def grid_shuffle(rng: np.random.Generator, image: np.ndarray, cells: int) -> np.ndarray:
    """``image`` cut into ``cells`` × ``cells`` tiles put back in a random order: the part's own
    material, in the wrong place (the reference's self-augmented fill source)."""
    s = image.shape[0] // cells * cells
    tiles = image[:s, :s].reshape(cells, s // cells, cells, s // cells, 3).swapaxes(1, 2).reshape(-1, s // cells, s // cells, 3)
    tiles = tiles[rng.permutation(len(tiles))].reshape(cells, cells, s // cells, s // cells, 3).swapaxes(1, 2)
    out = image.copy()
    out[:s, :s] = tiles.reshape(s, s, 3)
    return out


def photometric(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """One of solarise, posterise, invert or nothing, as the reference augments its fill."""
    kind = rng.integers(0, 4)
    if kind == 0:
        t = rng.integers(64, 224)
        return np.where(img >= t, 255 - img, img).astype(np.uint8)
    if kind == 1:
        bits = int(rng.integers(2, 5))
        return (img >> (8 - bits) << (8 - bits)).astype(np.uint8)
    if kind == 2:
        return (255 - img).astype(np.uint8)
    return img


class AnomalySynthesizer:
    """Perlin-mask anomalies blended from a texture source.

    ``transparency`` β ∈ [0, ``max_beta``]: the anomaly pixel is ``β · image + (1 − β) · texture``.
    ``normal_fraction`` of the samples stay unchanged with an empty mask. ``self_fill``: the share
    of anomalies filled from a grid-shuffled copy of the image itself rather than the texture
    source; every fill is then solarised, posterised, inverted or left (``photometric``).
    """

    def __init__(self, textures: TextureSource, threshold: float = 0.3, max_beta: float = 0.8,
                 normal_fraction: float = 0.5, foreground_threshold: float | None = None, self_fill: float = 0.0,
                 photometric: bool = False):
        self.textures = textures
        self.threshold = threshold
        self.max_beta = max_beta
        self.normal_fraction = normal_fraction
        self.foreground_threshold = foreground_threshold
        self.self_fill = self_fill
        self.photometric = photometric

    def foreground(self, image: np.ndarray) -> np.ndarray | None:
        """For objects: pixels that differ from the border's median colour (None = whole image)."""
        if self.foreground_threshold is None:
            return None
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        diff = np.abs(image.astype(np.int16) - np.median(border, axis=0)).max(axis=2)
        return diff > self.foreground_threshold

    def __call__(self, rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(S, S, 3)`` uint8 → same-size uint8 image and bool ``(S, S)`` mask (exactly the changed area)."""
        size = image.shape[0]
        if rng.random() < self.normal_fraction:
            return image, np.zeros(image.shape[:2], bool)
        mask = perlin_mask(rng, size, self.threshold, foreground=self.foreground(image))
        if self.self_fill and rng.random() < self.self_fill:
            fill = grid_shuffle(rng, image, int(rng.choice([4, 8])))
        else:
            fill = self.textures.sample(rng, size)
        if self.photometric:
            fill = photometric(rng, fill)
        texture = fill.astype(np.float32)
        beta = rng.uniform(0, self.max_beta)
        out = image.astype(np.float32)
        out[mask] = beta * out[mask] + (1 - beta) * texture[mask]
        out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
        # A blend can leave a pixel unchanged (texture ≈ image); the mask says only what changed.
        return out, mask & (out != image).any(axis=2)
