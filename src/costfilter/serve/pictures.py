"""A stored inspection's pictures.

The request path keeps what the pictures are drawn from: the upload, the 0/255 mask and the 8-bit
map (grey level 128 is the pixel threshold), with the regions, decision and score in the row. The
heat-map overlay and the thumbnail are drawn from those when first asked for, then kept beside
them: drawing and PNG-encoding a photo-sized overlay was most of a request's time, and most
inspections on a line are never looked at.

Drawn later or drawn at once (``inline``), the overlay is the same function of the same stored
values, so both give the same picture.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
from PIL import Image

from ..atomic import write_bytes
from ..data.imageio import decode
from ..errors import CostfilterError
from ..result_files import RENDER_MAX_SIDE, at_size, picture_boxes, picture_label
from ..viz import JET_LUT, compose, encode_png
from .store import HistoryStore

log = logging.getLogger("costfilter.serve")

#: the kinds of file drawn on first request rather than stored with the record
DRAWN_LATER = ("overlay", "thumb")
THUMB_SIDE = 160


def map_grey(amap: np.ndarray, pixel: float) -> tuple[np.ndarray, float]:
    """``(h, w)`` uint8 map with grey level 128 at the pixel threshold (so the page's default
    slider position is it), and the score that level 255 stands for."""
    scale = pixel * 255 / 128 if pixel > 0 else float(amap.max() or 1.0)
    return np.clip(amap / scale * 255.0 + 0.5, 0, 255).astype(np.uint8), scale


def overlay_picture(image: np.ndarray, grey: np.ndarray, mask: np.ndarray, row: dict[str, Any]) -> np.ndarray:
    """``(h, w, 3)`` uint8 overlay at the ``(h, w)`` mask's size: the image blended with jet
    colours of the ``grey`` map (any size; its level is the jet level, threshold at mid-scale, as
    in the CLI's overlays), the ``mask`` outlined, the row's region boxes and its decision and
    score as the label."""
    hw = mask.shape[:2]
    grey = at_size(grey, hw)  # kept at the model's resolution where that is smaller
    boxes = picture_boxes([r["box"] for r in row["regions"]], (row["height"], row["width"]), hw)
    return compose(at_size(image, hw), JET_LUT[grey], mask > 0, boxes=boxes,
                   label=picture_label(row["decision"], row["score"]))


def thumbnail(picture: np.ndarray) -> np.ndarray:
    """The overlay at most :data:`THUMB_SIDE` pixels on its long side."""
    img = Image.fromarray(picture)
    img.thumbnail((THUMB_SIDE, THUMB_SIDE))
    return np.asarray(img)


def _read(store: HistoryStore, row: dict[str, Any], kind: str) -> bytes:
    path = store.file_path(row["id"], row["files"][kind])
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CostfilterError(f"the {kind!r} file of prediction {row['id']!r} is missing from the store "
                              f"({exc.strerror or exc})") from None


def drawn_file(store: HistoryStore, row: dict[str, Any], kind: str) -> bytes:
    """The PNG of ``kind`` (overlay or thumb) of a stored record: the kept one, or drawn now from
    its upload, map and mask and kept (a store that cannot keep it still gets the picture)."""
    kept = store.file_path(row["id"], f"{kind}.png")
    if kept.is_file():
        return kept.read_bytes()
    if not {"image", "map", "mask"} <= set(row["files"]):
        raise CostfilterError(f"prediction {row['id']!r} has no {kind!r} picture")
    image = decode(store.file_path(row["id"], row["files"]["image"]), _read(store, row, "image"),
                   size=RENDER_MAX_SIDE // 4)[0]
    grey = np.asarray(Image.open(io.BytesIO(_read(store, row, "map"))).convert("L"))
    mask = np.asarray(Image.open(io.BytesIO(_read(store, row, "mask"))).convert("L"))
    picture = overlay_picture(image, grey, mask, row)
    pngs = {"overlay": encode_png(picture), "thumb": encode_png(thumbnail(picture))}
    for name, data in pngs.items():
        try:
            write_bytes(store.file_path(row["id"], f"{name}.png"), data)
        except OSError as exc:  # a cache: the record is whole without it
            log.warning("could not keep the %s of %s: %s", name, row["id"], exc.strerror or exc)
    return pngs[kind]
