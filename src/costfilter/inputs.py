"""The input pipeline of a detector: decode, resize, cut into tiles, batch, show progress.

Everything between image files (or arrays) and ``(B, 3, S, S)`` uint8 model inputs, for one
config, so fitting, calibration, prediction and evaluation read images the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import DetectorConfig
from .data.imageio import read_image, resize_image, to_tensor
from .data.loader import Batch, images_from_arrays, iter_batches
from .errors import CostfilterError
from .tiling import cut_tiles, tile_boxes


class Inputs:
    """Images → model inputs for one ``config``; ``progress`` shows bars on long loops.

    ``reference_sets``: batches are their own reference sets (zero-shot scoring), so they are
    split evenly and never hold a lone image.
    """

    def __init__(self, config: DetectorConfig, progress: bool = True, reference_sets: bool = False):
        self.config = config
        self.progress = progress
        self.reference_sets = reference_sets

    @property
    def size(self) -> int:
        return self.config.features.image_size

    @property
    def batch_size(self) -> int:
        return self.config.zeroshot.batch_size if self.reference_sets else self.config.batch_size

    @property
    def tiled(self) -> bool:
        """True when images are scored tile by tile (``config.tiling.size`` > 0)."""
        return self.config.tiling.size > 0

    def bar(self, **kw: Any) -> tqdm:
        """A progress bar (silent when ``progress`` is off)."""
        return tqdm(disable=not self.progress, dynamic_ncols=True, **kw)

    @contextmanager
    def loss_bar(self, steps: int, desc: str) -> Iterator[Callable[[int, float], None]]:
        """A training progress bar; yields ``tick(steps_done, loss)`` for the training loops."""
        with self.bar(total=steps, desc=desc, unit="step") as bar:
            def tick(n: int, loss: float) -> None:
                bar.update(n)
                bar.set_postfix(loss=f"{loss:.3f}")

            yield tick

    def _check_pool(self, n: int) -> None:
        if self.reference_sets and n < 2:
            raise CostfilterError(f"zero-shot scoring needs at least 2 images, got {n}")

    def batches(self, paths: Sequence[Path], desc: str, skip_errors: bool = False) -> Iterator[Batch]:
        """Decoded, resized batches of image files, in order, with a progress bar;
        ``skip_errors``: unreadable files go to each batch's ``errors``."""
        self._check_pool(len(paths))
        with self.bar(total=len(paths), desc=desc, unit="img") as bar:
            for batch in iter_batches(paths, self.size, self.batch_size, even=self.reference_sets,
                                      skip_errors=skip_errors):
                yield batch
                bar.update(len(batch.paths) + len(batch.errors))

    def array_batches(self, arrays: Sequence[np.ndarray]) -> Iterator[Batch]:
        """Batches of in-memory ``(H, W[, 3])`` uint8 arrays, in near-equal chunks of at most a
        batch: memory stays bounded, and a reference set is never a lone image."""
        self._check_pool(len(arrays))
        chunks = np.array_split(np.arange(len(arrays)), -(-len(arrays) // self.batch_size))
        for c in chunks:
            yield images_from_arrays([arrays[i] for i in c], self.size, start=int(c[0]))

    def load(self, paths: Sequence[Path], desc: str) -> tuple[torch.Tensor, np.ndarray]:
        """Decoded ``(N, 3, S, S)`` uint8 model inputs and, per row, the index of its source path:
        one row per image, or with tiling one row per tile."""
        if not self.tiled:
            return torch.cat([b.images for b in self.batches(paths, desc)]), np.arange(len(paths))
        t = self.config.tiling
        rows, owners = [], []
        with self.bar(total=len(paths), desc=desc, unit="img") as bar:
            for i, p in enumerate(paths):
                image = read_image(p)
                tiles = cut_tiles(image, tile_boxes(image.shape[:2], t.size, t.overlap))
                rows.append(to_tensor([resize_image(x, self.size) for x in tiles]))
                owners += [i] * len(tiles)
                bar.update()
        return torch.cat(rows), np.array(owners)

    def features(self, extract: Callable[[torch.Tensor], torch.Tensor], source: Sequence[Path] | torch.Tensor,
                 desc: str) -> Iterator[torch.Tensor]:
        """``extract`` applied batch by batch to image files or decoded ``(N, 3, S, S)`` rows."""
        bs = self.config.batch_size
        batches: Iterable[torch.Tensor]
        if isinstance(source, torch.Tensor):
            batches = (source[i : i + bs] for i in range(0, len(source), bs))
        else:
            batches = (b.images for b in iter_batches(source, self.size, bs))
        with self.bar(total=len(source), desc=desc, unit="img") as bar, torch.inference_mode():
            for images in batches:
                yield extract(images)
                bar.update(len(images))


    def run_tiles(self, model: Callable[..., tuple[torch.Tensor, torch.Tensor]], tiles: Sequence[np.ndarray],
                  exclude: int | None = None) -> torch.Tensor:
        """``(n, S, S)`` maps of raw tiles, resized and run ``batch_size`` at a time; ``exclude``:
        the fit image whose bank rows the tiles must not match (leave-one-out calibration)."""
        bs = self.config.batch_size
        batch = to_tensor([resize_image(x, self.size) for x in tiles])
        maps = []
        with torch.inference_mode():
            for i in range(0, len(batch), bs):
                chunk = batch[i : i + bs]
                args = () if exclude is None else (torch.full((len(chunk),), exclude, device="cpu"),)
                maps.append(model(chunk, *args)[0].float().cpu())
        return torch.cat(maps)


def to_hwc(images: torch.Tensor) -> np.ndarray:
    """``(N, 3, S, S)`` uint8 tensor → ``(N, S, S, 3)`` array, the layout the synthesizer works in."""
    return images.permute(0, 2, 3, 1).contiguous().numpy()
