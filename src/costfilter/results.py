"""What a detector returns: one image's :class:`Prediction` (with its defect :class:`Region`\\ s),
and an :class:`Evaluation` (metrics per category, per-image records). Plain data, no model code."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
    #: pixel threshold this image's regions use when it differs per image (zero-shot batches)
    pixel_threshold: float | None = None

    def map_at_original_size(self) -> np.ndarray:
        """The anomaly map resized (bilinear) to the source image's ``(H, W)``."""
        from .viz import resize_map

        return resize_map(self.anomaly_map, self.size)

    def regions(self, pixel_threshold: float, min_area: int = 1) -> list[Region]:
        """Connected regions (8-connectivity) of the map above ``pixel_threshold`` at the source size."""
        from scipy import ndimage

        amap = self.map_at_original_size()
        labels, _ = ndimage.label(amap > pixel_threshold, structure=np.ones((3, 3), bool))
        out = []
        for i, sl in enumerate(ndimage.find_objects(labels), start=1):
            inside = labels[sl] == i
            area = int(inside.sum())
            if area < min_area:
                continue
            vals = amap[sl][inside]
            out.append(Region((sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1), area,
                              100.0 * area / amap.size, float(vals.max()), float(vals.mean())))
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
