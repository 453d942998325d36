"""Normal image → (image with a synthetic anomaly, exact mask), or left normal half of the time."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .perlin import perlin_mask


class TextureSource(Protocol):
    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray: ...


class AnomalySynthesizer:
    """Perlin-mask anomalies blended from a texture source.

    ``transparency`` β ∈ [0, ``max_beta``]: the anomaly pixel is ``β · image + (1 − β) · texture``.
    ``normal_fraction`` of the samples stay unchanged with an empty mask.
    """

    def __init__(self, textures: TextureSource, threshold: float = 0.3, max_beta: float = 0.8,
                 normal_fraction: float = 0.5, foreground_threshold: float | None = None):
        self.textures = textures
        self.threshold = threshold
        self.max_beta = max_beta
        self.normal_fraction = normal_fraction
        self.foreground_threshold = foreground_threshold

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
        texture = self.textures.sample(rng, size).astype(np.float32)
        beta = rng.uniform(0, self.max_beta)
        out = image.astype(np.float32)
        out[mask] = beta * out[mask] + (1 - beta) * texture[mask]
        out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
        # A blend can leave a pixel unchanged (texture ≈ image); the mask says only what changed.
        return out, mask & (out != image).any(axis=2)
