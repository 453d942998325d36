"""Pictures: heat-map overlays with the predicted region outlined, binary masks, grids."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image
from scipy import ndimage

_JET = colormaps["jet"]


def resize_map(amap: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float ``(h, w)`` map to ``hw`` = ``(H, W)``."""
    if amap.shape == tuple(hw):
        return amap
    return np.asarray(Image.fromarray(amap.astype(np.float32), mode="F").resize((hw[1], hw[0]), Image.BILINEAR))


#: ``(257, 3)`` uint8: jet's 256 colours, looked up by level (matplotlib's colormap call computes
#: float RGBA per pixel; this lookup gives the same bytes in about a third of the time).
#: Level 256 is the colour matplotlib gives a NaN score.
JET_LUT = (np.concatenate([_JET(np.arange(_JET.N)), [_JET.get_bad()]])[:, :3] * 255).astype(np.uint8)


def heat_levels(amap: np.ndarray, threshold: float) -> np.ndarray:
    """``(H, W)`` jet levels 0…255 of scores, with the pixel threshold at mid-scale (level 128),
    binned as matplotlib bins a float in [0, 1] (NaN: 256)."""
    scale = 2.0 * threshold if threshold > 0 else float(amap.max() or 1.0)
    x = np.minimum(np.clip(amap / scale, 0.0, 1.0) * _JET.N, _JET.N - 1)
    return np.nan_to_num(x, nan=_JET.N).astype(np.intp)


def heat_colours(amap: np.ndarray, threshold: float) -> np.ndarray:
    """Map scores to jet colours with the pixel threshold at mid-scale, so images compare by colour."""
    return JET_LUT[heat_levels(amap, threshold)]


def outline(mask: np.ndarray) -> np.ndarray:
    """The one-pixel border of a bool mask."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def overlay(image: np.ndarray, amap: np.ndarray, threshold: float, alpha: float = 0.45,
            gt_mask: np.ndarray | None = None, boxes: list[tuple[int, int, int, int]] | None = None,
            label: str | None = None) -> np.ndarray:
    """``(H, W, 3)`` uint8: image blended with the heat-map; predicted region outlined in white,
    ground truth (if given) in green, region boxes ``(x0, y0, x1, y1)`` in yellow, ``label`` on top."""
    amap = resize_map(amap, image.shape[:2])
    return compose(image, heat_colours(amap, threshold), amap > threshold, alpha, gt_mask, boxes, label)


def compose(image: np.ndarray, colours: np.ndarray, predicted: np.ndarray, alpha: float = 0.45,
            gt_mask: np.ndarray | None = None, boxes: list[tuple[int, int, int, int]] | None = None,
            label: str | None = None) -> np.ndarray:
    """:func:`overlay` from its parts: ``(H, W, 3)`` uint8 ``image`` and heat ``colours``, the
    ``(H, W)`` bool ``predicted`` region (outlined in white), and the rest as there."""
    out = ((1 - alpha) * image + alpha * colours).astype(np.uint8)
    thick = ndimage.binary_dilation(outline(predicted)) if predicted.any() else predicted
    out[thick] = (255, 255, 255)
    if gt_mask is not None and gt_mask.any():
        out[ndimage.binary_dilation(outline(gt_mask))] = (0, 255, 0)
    if boxes or label:
        from PIL import ImageDraw

        img = Image.fromarray(out)
        draw = ImageDraw.Draw(img)
        for x0, y0, x1, y1 in boxes or []:
            draw.rectangle((x0, y0, x1, y1), outline=(255, 230, 0), width=max(1, min(image.shape[:2]) // 150))
        if label:
            from PIL import ImageFont

            # Readable on large images too: about 1/30 of the shorter side, at least 11 px.
            font = ImageFont.load_default(size=max(11, min(image.shape[:2]) // 30))
            x0, y0, x1, y1 = draw.textbbox((3, 1), label, font=font)
            draw.rectangle((0, 0, x1 + 3, y1 + 2), fill=(0, 0, 0))
            draw.text((3, 1), label, fill=(255, 255, 255), font=font)
        out = np.asarray(img)
    return out


def mask_image(amap: np.ndarray, threshold: float, hw: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` uint8 0/255 predicted mask at the original image size."""
    return (resize_map(amap, hw) > threshold).astype(np.uint8) * 255


#: zlib level for our PNGs: a 512 px heat-map overlay takes ~30 ms at 1 and ~80 ms at Pillow's
#: default 6, for files ~12 % larger (measured here); the service writes several per request.
PNG_LEVEL = 1


def encode_png(array: np.ndarray) -> bytes:
    """A uint8 array as PNG file content."""
    import io

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def save_png(array: np.ndarray, path) -> None:
    """Save a uint8 array as PNG atomically."""
    from .atomic import write_bytes

    write_bytes(path, encode_png(array))
