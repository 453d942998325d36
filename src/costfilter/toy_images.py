"""Small synthetic images with planted defects: for the self-test (``doctor``) and the tests."""

from __future__ import annotations

import numpy as np


def texture(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """``(size, size, 3)`` uint8: a regular stripe texture with mild noise ('normal')."""
    yy, xx = np.mgrid[0:size, 0:size]
    base = 128 + 60 * np.sin(xx / 2.5) * np.cos(yy / 3.0)
    img = base[..., None] + rng.normal(0, 4, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def planted_defect(rng: np.random.Generator, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """The texture with a flat red square at a random place, and its 0/255 ``(size, size)`` mask."""
    img = texture(rng, size)
    s = size // 4
    y, x = rng.integers(2, size - s - 2, 2)
    img[y : y + s, x : x + s] = (250, 30, 30)
    mask = np.zeros((size, size), np.uint8)
    mask[y : y + s, x : x + s] = 255
    return img, mask
