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
        from .viz import above_window

        hw = tuple(at) if at is not None else tuple(self.size)
        window = above_window(self.anomaly_map, hw, pixel_threshold)
        if window is None:
            return []
        return map_regions(window[1], self.size, pixel_threshold, min_area, at=hw, origin=window[0])


def map_regions(amap: np.ndarray, size: tuple[int, int], pixel_threshold: float, min_area: int = 1, *,
                at: tuple[int, int] | None = None, origin: tuple[int, int] = (0, 0)) -> list[Region]:
    """:meth:`Prediction.regions` of a map already at the size searched, for an image of source
    ``size`` ``(H, W)`` (a caller that holds the resized map resizes it once). ``amap`` may be a
    window of that map (:func:`~costfilter.viz.above_window`): ``at`` is the whole map's
    ``(h, w)`` (default: ``amap``'s) and ``origin`` the window's top-left corner in it."""
    from scipy import ndimage

    from .viz import above_bounds

    h, w = at if at is not None else amap.shape
    sy, sx = size[0] / h, size[1] / w
    above = amap > pixel_threshold
    bounds = above_bounds(above)
    if bounds is None:
        return []
    # Labelled within the pixels' bounding box only: labelling costs the area searched, and
    # defects are small beside the image.
    y0, y1, x0, x1 = bounds
    labels, _ = ndimage.label(above[y0:y1, x0:x1], structure=np.ones((3, 3), bool))
    out = []
    for i, (ly, lx) in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[ly, lx] == i
        area = round(int(inside.sum()) * sy * sx)
        if area < min_area:
            continue
        vals = amap[ly.start + y0:ly.stop + y0, lx.start + x0:lx.stop + x0][inside]
        top, left = ly.start + y0 + origin[0], lx.start + x0 + origin[1]
        bottom, right = ly.stop + y0 + origin[0], lx.stop + x0 + origin[1]
        box = (int(left * sx), int(top * sy), int(np.ceil(right * sx)) - 1, int(np.ceil(bottom * sy)) - 1)
        out.append(Region(box, area, 100.0 * inside.sum() / (h * w), float(vals.max()), float(vals.mean())))
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
