"""Decode and resize images in a background thread while the model runs on the previous batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .imageio import as_rgb, decode, resize_image, shrink, to_tensor


@dataclass
class Batch:
    """``images``: ``(B, 3, S, S)`` uint8; ``sizes``: each original ``(H, W)``; ``paths``: sources."""

    images: torch.Tensor
    sizes: list[tuple[int, int]]
    paths: list[Path]


def _load(paths: Sequence[Path], size: int) -> Batch:
    arrays, sizes = [], []
    for p in paths:
        img, source = decode(Path(p), size=size)
        sizes.append(source)
        arrays.append(resize_image(img, size))
    return Batch(to_tensor(arrays), sizes, list(paths))


def iter_batches(paths: Sequence[Path], size: int, batch_size: int, even: bool = False) -> Iterator[Batch]:
    """Batches of resized images in order; decoding of batch k+1 overlaps use of batch k.

    ``even``: split into ``ceil(N / batch_size)`` near-equal batches (no short last batch), for
    methods whose batch is its own reference set.
    """
    if even and paths:
        n = -(-len(paths) // batch_size)
        chunks = [list(c) for c in np.array_split(np.array(paths, dtype=object), n)]
    else:
        chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_load, chunks[0], size)
        for nxt in chunks[1:]:
            batch = pending.result()
            pending = pool.submit(_load, nxt, size)
            yield batch
        yield pending.result()


def images_from_arrays(arrays: Sequence[np.ndarray], size: int, start: int = 0) -> Batch:
    """A batch from in-memory ``(H, W, 3)`` uint8 arrays (grayscale ``(H, W)`` accepted), named
    ``<array i>`` from ``i = start``."""
    prepared = [as_rgb(a) for a in arrays]
    return Batch(to_tensor([resize_image(shrink(a, size), size) for a in prepared]), [a.shape[:2] for a in prepared],
                 [Path(f"<array {i}>") for i in range(start, start + len(prepared))])
