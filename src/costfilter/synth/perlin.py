"""Seeded 2-D Perlin (gradient) noise and the thresholded, rotated masks cut from it."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def perlin_noise(rng: np.random.Generator, size: int, res: int) -> np.ndarray:
    """``(size, size)`` Perlin noise in about [-1, 1] with ``res`` × ``res`` gradient cells.

    ``size`` need not be a multiple of ``res``: the lattice is evaluated on a continuous grid.
    """
    angles = rng.uniform(0, 2 * np.pi, (res + 1, res + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    coords = np.linspace(0, res, size, endpoint=False)
    y, x = np.meshgrid(coords, coords, indexing="ij")
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = y - y0, x - x0

    def dot(dy: int, dx: int) -> np.ndarray:
        g = grads[y0 + dy, x0 + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    u, v = fade(fx), fade(fy)
    top = dot(0, 0) * (1 - u) + dot(0, 1) * u
    bottom = dot(1, 0) * (1 - u) + dot(1, 1) * u
    return np.sqrt(2) * (top * (1 - v) + bottom * v)


def perlin_mask(rng: np.random.Generator, size: int, threshold: float = 0.3, min_scale: int = 0,
                max_scale: int = 5, foreground: np.ndarray | None = None, min_pixels: int = 16,
                tries: int = 8) -> np.ndarray:
    """A bool ``(size, size)`` blob mask: Perlin noise with ``2^a`` cells per side (a drawn from
    ``[min_scale, max_scale]``), rotated by a random angle, thresholded at ``threshold``.

    With ``foreground`` (bool), the mask is restricted to it (objects: no anomalies on the
    background). Retries up to ``tries`` times for a mask of at least ``min_pixels``.
    """
    mask = np.zeros((size, size), bool)
    # Noise is made at half resolution and upsampled (bilinear) before thresholding: the blob
    # edges stay smooth at a quarter of the cost.
    work = max(16, size // 2)
    for _ in range(tries):
        res = int(2 ** rng.integers(min_scale, max_scale + 1))
        # Noise on a larger square so the rotated crop has no empty corners.
        big = int(np.ceil(work * 1.5))
        noise = perlin_noise(rng, big, res)
        noise = ndimage.rotate(noise, rng.uniform(-90, 90), reshape=False, order=1, mode="reflect")
        off = (big - work) // 2
        noise = noise[off : off + work, off : off + work]
        if work != size:
            noise = ndimage.zoom(noise, size / work, order=1)[:size, :size]
        mask = noise > threshold
        if foreground is not None:
            mask &= foreground
        if mask.sum() >= min_pixels:
            return mask
    return mask
