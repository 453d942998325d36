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


def _taps(n_in: int, n_out: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's bilinear taps for outputs ``lo…hi-1`` of ``n_in`` → ``n_out`` ≥ ``n_in``: each
    output's first input, its tap count (1 or 2) and ``(n, 2)`` weights (zero past the count),
    computed as Pillow computes them (double precision, C's truncating casts, tap-order sums)."""
    centre = (np.arange(lo, hi, dtype=np.float64) + 0.5) * (n_in / n_out)
    first = np.maximum((centre - 0.5).astype(np.int64), 0)
    count = np.minimum((centre + 1.5).astype(np.int64), n_in) - first
    w = np.clip(1.0 - np.abs(np.arange(2)[None, :] + first[:, None] - centre[:, None] + 0.5), 0.0, None)
    w[np.arange(2)[None, :] >= count[:, None]] = 0.0
    total = w[:, 0] + w[:, 1]
    return first, count, w / np.where(total == 0.0, 1.0, total)[:, None]


def _reach(n_in: int, n_out: int, lo_in: int, hi_in: int) -> tuple[int, int]:
    """The outputs ``[lo, hi)`` whose taps reach inputs ``lo_in…hi_in-1`` (``n_out`` ≥ ``n_in``)."""
    if n_in == n_out:
        return lo_in, hi_in
    first, count, _ = _taps(n_in, n_out, 0, n_out)
    hit = np.flatnonzero((first < hi_in) & (first + count > lo_in))
    return int(hit[0]), int(hit[-1]) + 1


def _pass(src: np.ndarray, first: np.ndarray, count: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """One of Pillow's passes along ``axis`` (0: down, 1: across) of a float32 ``src``, for the
    outputs whose taps are given (:func:`_taps`): float32, that axis as long as ``first``."""
    acc = np.zeros(src.shape[:axis] + (len(first),) + src.shape[axis + 1:])
    for j in range(weights.shape[1]):
        live = j < count  # only the taps Pillow sums: a NaN or inf past them stays out
        idx = np.where(live, first + j, first)
        wj = weights[:, j] if axis == 1 else weights[:, j, None]
        with np.errstate(invalid="ignore"):  # inf × a dead tap's zero, discarded below
            part = np.take(src, idx, axis=axis).astype(np.float64) * wj
        acc += np.where(live if axis == 1 else live[:, None], part, 0.0)
    return acc.astype(np.float32)


def resize_map_window(amap: np.ndarray, hw: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]
                      ) -> np.ndarray:
    """``resize_map(amap, hw)[rows[0]:rows[1], cols[0]:cols[1]]`` for a map enlarged (or kept)
    on both sides, equal bit for bit (tested against Pillow) at the cost of the window alone:
    Pillow's two passes, across then down, each summed in double precision in tap order and
    stored as float32; a side that keeps its size gets no pass, as in Pillow."""
    a = np.asarray(amap, dtype=np.float32)
    (h, w), (r0, r1), (c0, c1) = a.shape, rows, cols
    if hw[0] < h or hw[1] < w:
        raise ValueError(f"resize_map_window enlarges maps; {h}x{w} → {hw[0]}x{hw[1]} shrinks one")
    if h == hw[0]:
        top, bottom = r0, r1
    else:
        down = _taps(h, hw[0], r0, r1)
        top, bottom = int(down[0].min()), int((down[0] + down[1]).max())
    across = a[top:bottom, c0:c1] if w == hw[1] else _pass(a[top:bottom], *_taps(w, hw[1], c0, c1), axis=1)
    return across if h == hw[0] else _pass(across, down[0] - top, down[1], down[2], axis=0)


def above_window(amap: np.ndarray, hw: tuple[int, int], threshold: float
                 ) -> tuple[tuple[int, int], np.ndarray] | None:
    """Where ``amap`` resized to ``hw`` (:func:`resize_map`) can exceed ``threshold``: the
    window's top-left corner and its values there, or None when no pixel can.

    A resized pixel is a weighted mean (weights ≥ 0) of the input pixels its taps reach, so it
    can exceed the threshold only where a tap reaches an input pixel that does: the window is
    the outputs reaching those pixels' bounding box. Defects are small, so an enlarged map (the
    usual case: the model's map drawn at the photo's size) costs the window alone; a shrunk
    one is resized whole."""
    bounds = above_bounds(np.asarray(amap) > threshold)
    if bounds is None:
        return None
    (h, w), (top, bottom, left, right) = amap.shape, bounds
    if hw[0] < h or hw[1] < w:
        return (0, 0), resize_map(amap, hw)
    r, c = _reach(h, hw[0], top, bottom), _reach(w, hw[1], left, right)
    return (r[0], c[0]), resize_map_window(amap, hw, r, c)


def above_bounds(above: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` of the true pixels of a 2-D ``above`` (ends exclusive), or
    None when there are none."""
    rows = np.flatnonzero(above.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(above.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


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


#: zlib level for our PNGs: a 512 px heat-map overlay takes ~30 ms at 1 and ~80 ms at Pillow's
#: default 6, for files ~12 % larger (measured here); the service writes several per request.
PNG_LEVEL = 1


def encode_png(array: np.ndarray) -> bytes:
    """A uint8 array as PNG file content: ``(H, W)`` grey, ``(H, W, 3)`` colour."""
    import io

    if array.ndim == 2:
        return _grey_png(array)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def _grey_png(array: np.ndarray) -> bytes:
    """``(H, W)`` uint8 as an 8-bit greyscale PNG: every row "Up"-filtered (its difference from
    the row above), deflated at :data:`PNG_LEVEL` with zlib's run-length strategy.

    Written here, not by Pillow, because it is on every request's path (a mask and a map each):
    Pillow tries all five filters on every row. Measured on metal_plate's masks and maps
    (``benchmarks/latency.py``, its ``png`` rows), this takes about half the time for files of
    the same size; any PNG reader decodes it to the same array (tested against Pillow's).
    """
    import struct
    import zlib

    if array.dtype != np.uint8:
        raise TypeError(f"a grey PNG is made of uint8, not {array.dtype}")
    a = np.ascontiguousarray(array)
    h, w = a.shape
    rows = np.empty((h, w + 1), np.uint8)
    rows[:, 0] = 2  # filter type Up; the first row's "row above" is zeros, so it is itself
    rows[0, 1:] = a[0]
    np.subtract(a[1:], a[:-1], out=rows[1:, 1:])  # wraps modulo 256, as PNG defines it
    deflate = zlib.compressobj(PNG_LEVEL, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    idat = deflate.compress(rows) + deflate.flush()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit grey, deflate, adaptive filters, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def save_png(array: np.ndarray, path) -> None:
    """Save a uint8 array as PNG atomically."""
    from .atomic import write_bytes

    write_bytes(path, encode_png(array))
