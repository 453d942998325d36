"""Tiling for large images: cut overlapping tiles, score each at the model's size, stitch the
tile maps back into one map at the source resolution without seams.

Stitching is a weighted average whose per-tile weights ramp linearly across the overlap, so the
weights of overlapping tiles sum to a constant there: where two tiles agree the result is exact,
and where they disagree it blends from one to the other over the overlap instead of jumping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import TilingConfig
from .data.imageio import as_rgb, read_image
from .errors import CostfilterError, DataError

#: ``(y0, x0, height, width)`` of one tile in source pixels
Box = tuple[int, int, int, int]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets along one axis: the fewest tiles that cover ``length`` with at least
    ``overlap`` pixels shared by neighbours, spread evenly so the last tile ends at the border."""
    if tile <= 0 or not 0 <= overlap < tile:
        raise CostfilterError(f"tiling needs tile > overlap ≥ 0, got tile {tile}, overlap {overlap}")
    if length <= tile:
        return [0]
    n = -(-(length - overlap) // (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_boxes(hw: tuple[int, int], tile: int, overlap: int) -> list[Box]:
    """Tiles covering an ``(H, W)`` image, row by row. A side shorter than ``tile`` is one tile of
    that side's length (the tile is then squashed to the model's square input, as whole images are)."""
    h, w = hw
    th, tw = min(tile, h), min(tile, w)
    return [(y, x, th, tw) for y in tile_starts(h, tile, overlap) for x in tile_starts(w, tile, overlap)]


def cut_tiles(image: np.ndarray, boxes: Sequence[Box]) -> list[np.ndarray]:
    """Crops of an ``(H, W, 3)`` image, one per box (views, no copy)."""
    return [image[y : y + th, x : x + tw] for y, x, th, tw in boxes]


def ramp(n: int, overlap: int) -> torch.Tensor:
    """``(n,)`` blending profile along one side: 1 inside, falling linearly to ``1 / (overlap + 1)``
    at both ends."""
    i = torch.arange(n, dtype=torch.float32, device="cpu")
    return torch.minimum(torch.minimum(i + 1, n - i), torch.tensor(overlap + 1.0, device="cpu")) / (overlap + 1.0)


def ramp_weight(th: int, tw: int, overlap: int) -> torch.Tensor:
    """``(th, tw)`` blending weight: the outer product of the two sides' :func:`ramp` profiles."""
    return ramp(th, overlap)[:, None] * ramp(tw, overlap)[None, :]


class Stitcher:
    """Builds one ``(H, W)`` source-size map from tile maps added a few at a time, so a huge
    image never holds all its tiles (or tile maps) at once: memory is one ``(H, W)`` plane.

    Each tile map is resized (bilinear) to its box and added with :func:`ramp_weight`; the result
    is the sum divided by the summed weights. The boxes form a grid (every row start with every
    column start, as :func:`tile_boxes` lays them), so the summed weight is the product of a
    row profile and a column profile, and no second plane is needed.
    """

    def __init__(self, hw: tuple[int, int], overlap: int):
        self.overlap = overlap
        # Stitched in host memory: a source-size plane, whatever device scored the tiles.
        self.total = torch.zeros(hw, device="cpu")
        self.rows, self.cols = torch.zeros(hw[0], device="cpu"), torch.zeros(hw[1], device="cpu")
        self.row_starts: set[int] = set()
        self.col_starts: set[int] = set()
        self.added = 0

    def add(self, tile_maps: torch.Tensor, boxes: Sequence[Box]) -> None:
        """``(n, s, s)`` tile maps (at the model's size) for ``boxes`` (all of one size)."""
        if len(boxes) != len(tile_maps):
            raise ValueError(f"{len(tile_maps)} tile maps for {len(boxes)} boxes")
        if not boxes:
            return
        th, tw = boxes[0][2], boxes[0][3]
        maps = tile_maps.float().cpu()
        if maps.shape[-2:] != (th, tw):
            maps = F.interpolate(maps.unsqueeze(1), size=(th, tw), mode="bilinear", align_corners=False).squeeze(1)
        ramp_h, ramp_w = ramp(th, self.overlap), ramp(tw, self.overlap)
        weight = ramp_h[:, None] * ramp_w[None, :]
        for m, (y, x, _, _) in zip(maps, boxes):
            self.total[y : y + th, x : x + tw] += m * weight
            if y not in self.row_starts:
                self.row_starts.add(y)
                self.rows[y : y + th] += ramp_h
            if x not in self.col_starts:
                self.col_starts.add(x)
                self.cols[x : x + tw] += ramp_w
        self.added += len(boxes)

    def result(self) -> torch.Tensor:
        """The stitched ``(H, W)`` map (the accumulator itself, divided in place)."""
        if self.added != len(self.row_starts) * len(self.col_starts):
            raise ValueError(f"{self.added} tiles do not form a grid of {len(self.row_starts)} × {len(self.col_starts)}")
        return self.total.div_(self.rows[:, None]).div_(self.cols[None, :])


def stitch(tile_maps: torch.Tensor, boxes: Sequence[Box], hw: tuple[int, int], overlap: int) -> torch.Tensor:
    """``(n, s, s)`` tile maps (at the model's size) → ``(H, W)`` map at the source size (see
    :class:`Stitcher`)."""
    stitcher = Stitcher(hw, overlap)
    stitcher.add(tile_maps, boxes)
    return stitcher.result()


def top_mean(amap: torch.Tensor, top_percent: float) -> float:
    """Image score of one map of any size: the mean of its top ``top_percent`` % values."""
    flat = amap.flatten()
    k = max(1, round(flat.numel() * top_percent / 100.0))
    return float(flat.topk(k).values.mean())


def score_tiled(image: np.ndarray, tile: int, overlap: int, top_percent: float,
                run: Callable[[list[np.ndarray]], torch.Tensor], chunk: int = 32) -> tuple[torch.Tensor, float]:
    """Score one ``(H, W, 3)`` image tile by tile: ``run(tiles) → (n, s, s)`` tile maps, called on
    at most ``chunk`` tiles at a time (memory stays bounded whatever the tile count); returns the
    stitched ``(H, W)`` map and the image score (:func:`top_mean` of the stitched map)."""
    boxes = tile_boxes(image.shape[:2], tile, overlap)
    stitcher = Stitcher(image.shape[:2], overlap)
    for i in range(0, len(boxes), max(1, chunk)):
        part = boxes[i : i + chunk]
        stitcher.add(run(cut_tiles(image, part)), part)
    stitched = stitcher.result()
    return stitched, top_mean(stitched, top_percent)


def tiled_scores(items: Sequence[Path | str | np.ndarray], tiling: TilingConfig, top_percent: float, chunk: int,
                 run: Callable[[int, list[np.ndarray]], torch.Tensor], errors: list[tuple[str, str]] | None = None,
                 bar: Any = None) -> Iterator[tuple[int, str, torch.Tensor, float]]:
    """The one tiled scoring loop (eager inference, leave-one-out calibration, the ONNX runtime):
    each item, a file or an ``(H, W[, 3])`` uint8 array, is read whole, one at a time, and scored
    tile by tile with ``run(index, tiles) → (n, s, s)`` tile maps. Yields ``(index, name, (H, W)
    map, score)``. ``errors``: unreadable files are appended to it as ``(path, message)`` and
    skipped (without it they raise); ``bar``: a progress bar advanced per item."""
    for i, item in enumerate(items):
        name = f"<array {i}>" if isinstance(item, np.ndarray) else str(item)
        try:
            image = as_rgb(item) if isinstance(item, np.ndarray) else read_image(item)
        except DataError as exc:
            if errors is None:
                raise
            errors.append((name, str(exc)))
        else:
            amap, score = score_tiled(image, tiling.size, tiling.overlap, top_percent,
                                      lambda tiles, i=i: run(i, tiles), chunk=chunk)
            del image  # one full-size image at a time, however long the caller keeps the maps
            yield i, name, amap, score
        if bar is not None:
            bar.update()
