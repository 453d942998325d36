"""What a detector returns: one image's :class:`Prediction` (with its defect :class:`Region`\\ s),
and an :class:`Evaluation` (metrics per category, per-image records). Plain data, no model code."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: What ``predict`` takes: an image file, or an ``(H, W[, 3])`` uint8 array
ImageInput = str | Path | np.ndarray


@dataclass
class Region:
    """A connected defect region at the source image's size; ``box`` is ``(x0, y0, x1, y1)``, inclusive."""

    box: tuple[int, int, int, int]
    area_px: int
    area_pct: float
    peak: float
    mean: float


@dataclass
class Prediction:
    """One image's result. ``anomaly_map`` is float32 ``(S, S)`` at the model's resolution, or
    ``(H, W)`` at the source's when the image was scored in tiles.

    ``decision`` is ``pass`` / ``review`` / ``reject``, or ``unknown`` when even a typical patch
    of the image is far from normal (``typical_score`` > the model's limit): another product,
    camera or lighting rather than a defect.
    """

    path: str
    score: float
    decision: str
    anomaly_map: np.ndarray = field(repr=False)
    size: tuple[int, int]
    typical_score: float = 0.0
    #: pixel threshold this image's regions use when it differs per image (zero-shot batches,
    #: models with several learned categories)
    pixel_threshold: float | None = None
    #: the learned category the image was scored as (models with several, ``fit --continue``)
    category: str | None = None

    def map_at_original_size(self) -> np.ndarray:
        """The anomaly map resized (bilinear) to the source image's ``(H, W)``."""
        from .viz import resize_map

        return resize_map(self.anomaly_map, self.size)

    def regions(self, pixel_threshold: float, min_area: int = 1, at: tuple[int, int] | None = None) -> list[Region]:
        """Connected regions (8-connectivity) of the map above ``pixel_threshold``, in source pixels.

        ``at``: the ``(h, w)`` the map is resized to for the search (default: the source size);
        boxes and areas are scaled back to source pixels, so a huge image costs no huge map.
        ``min_area`` is in source pixels.
        """
        from .viz import resize_map

        hw = tuple(at) if at is not None else tuple(self.size)
        return map_regions(resize_map(self.anomaly_map, hw), self.size, pixel_threshold, min_area)


def map_regions(amap: np.ndarray, size: tuple[int, int], pixel_threshold: float, min_area: int = 1) -> list[Region]:
    """:meth:`Prediction.regions` of an ``(h, w)`` map already at the size searched, for an
    image of source ``size`` ``(H, W)`` (a caller that holds the resized map resizes it once)."""
    from scipy import ndimage

    sy, sx = size[0] / amap.shape[0], size[1] / amap.shape[1]
    labels, _ = ndimage.label(amap > pixel_threshold, structure=np.ones((3, 3), bool))
    out = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[sl] == i
        area = round(int(inside.sum()) * sy * sx)
        if area < min_area:
            continue
        vals = amap[sl][inside]
        box = (int(sl[1].start * sx), int(sl[0].start * sy), int(np.ceil(sl[1].stop * sx)) - 1,
               int(np.ceil(sl[0].stop * sy)) - 1)
        out.append(Region(box, area, 100.0 * inside.sum() / amap.size, float(vals.max()), float(vals.mean())))
    return sorted(out, key=lambda r: -r.peak)


@dataclass
class SampleResult:
    """Per-image record of an evaluation."""

    path: str
    category: str
    defect: str
    label: int
    score: float


@dataclass
class Evaluation:
    """Metrics per category and their mean; per-image scores; maps/masks when kept."""

    per_category: dict[str, dict[str, float]]
    mean: dict[str, float]
    samples: list[SampleResult]
    maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    masks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    seconds: float = 0.0
    images_per_second: float = 0.0
