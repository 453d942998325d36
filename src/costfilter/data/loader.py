"""Decode and resize images in a background thread while the model runs on the previous batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .imageio import as_rgb, decode, resize_image, shrink, to_tensor


@dataclass
class Batch:
    """``images``: ``(B, 3, S, S)`` uint8; ``sizes``: each original ``(H, W)``; ``paths``: sources;
    ``errors``: ``(path, message)`` of files that could not be read (only when skipping them;
    ``images`` may then hold fewer rows than were asked for, even none)."""

    images: torch.Tensor
    sizes: list[tuple[int, int]]
    paths: list[Path]
    errors: list[tuple[Path, str]] = field(default_factory=list)


def _load(paths: Sequence[Path], size: int, skip_errors: bool = False) -> Batch:
    arrays, sizes, kept, errors = [], [], [], []
    for p in paths:
        try:
            img, source = decode(Path(p), size=size)
        except DataError as exc:
            if not skip_errors:
                raise
            errors.append((Path(p), str(exc)))
            continue
        sizes.append(source)
        arrays.append(resize_image(img, size))
        kept.append(p)
    images = to_tensor(arrays) if arrays else torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return Batch(images, sizes, list(kept), errors)


def iter_batches(paths: Sequence[Path], size: int, batch_size: int, even: bool = False,
                 skip_errors: bool = False) -> Iterator[Batch]:
    """Batches of resized images in order; decoding of batch k+1 overlaps use of batch k.

    ``even``: split into ``ceil(N / batch_size)`` near-equal batches (no short last batch), for
    methods whose batch is its own reference set. ``skip_errors``: a file that cannot be read
    goes to its batch's ``errors`` instead of ending the run.
    """
    if even and paths:
        n = -(-len(paths) // batch_size)
        chunks = [list(c) for c in np.array_split(np.array(paths, dtype=object), n)]
    else:
        chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_load, chunks[0], size, skip_errors)
        for nxt in chunks[1:]:
            batch = pending.result()
            pending = pool.submit(_load, nxt, size, skip_errors)
            yield batch
        yield pending.result()


def images_from_arrays(arrays: Sequence[np.ndarray], size: int, start: int = 0) -> Batch:
    """A batch from in-memory ``(H, W, 3)`` uint8 arrays (grayscale ``(H, W)`` accepted), named
    ``<array i>`` from ``i = start``."""
    prepared = [as_rgb(a) for a in arrays]
    return Batch(to_tensor([resize_image(shrink(a, size), size) for a in prepared]), [a.shape[:2] for a in prepared],
                 [Path(f"<array {i}>") for i in range(start, start + len(prepared))])
