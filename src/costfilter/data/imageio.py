"""Decoding images and masks of any mode into arrays, with one-line errors."""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: the formats decoded anywhere (files and uploads alike); Pillow knows many more, each a larger
#: attack surface. MPO is the multi-picture JPEG some cameras write.
ACCEPTED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "BMP": "BMP", "TIFF": "TIFF", "WEBP": "WebP"}
#: Largest image decoded, in pixels (width × height), checked from the header before decoding.
#: 40 MP covers industrial cameras (a 7,000 × 5,000 sensor is 35 MP); ``--max-pixels`` changes it.
DEFAULT_MAX_PIXELS = 40_000_000
_limits = {"max_pixels": DEFAULT_MAX_PIXELS}


def set_max_pixels(n: int) -> None:
    """Change the largest image decoded (pixels); ``n`` ≤ 0 is refused."""
    if n <= 0:
        raise DataError(f"max pixels must be positive, got {n}")
    _limits["max_pixels"] = int(n)


def max_pixels() -> int:
    return _limits["max_pixels"]


def is_image_file(path: Path) -> bool:
    """True for a regular, visible file with an image extension."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def _read_file(path: Path) -> bytes:
    """A regular file's bytes; anything else (a FIFO that would block forever, a device, a
    folder) and read failures are one-line errors with the true reason."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise DataError(f"{path}: not a regular file ({kind})")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


#: EXIF orientations that turn the stored image by 90° (width and height swap when displayed)
_TRANSPOSING = {5, 6, 7, 8}


def _orientation(img: Image.Image) -> int | None:
    try:
        return img.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - a broken EXIF block: Pillow's transpose ignores it as well
        return None


def display_size(img: Image.Image) -> tuple[int, int]:
    """``(H, W)`` of an opened image as displayed: after its EXIF orientation, which
    :func:`to_rgb_array` applies, so maps, boxes and sizes are all in displayed pixels."""
    return (img.width, img.height) if _orientation(img) in _TRANSPOSING else (img.height, img.width)


def _open(path: Path, data: bytes | None = None) -> Image.Image:
    """Open ``path`` (or ``data``, named ``path`` in errors) and check its header: an accepted
    format, one frame, a non-zero size within :func:`max_pixels`. Nothing is decoded yet."""
    if data is None:
        data = _read_file(path)
    try:
        with warnings.catch_warnings():
            # Our own pixel limit (below) is lower than Pillow's bomb warning; its hard limit stays.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file (or an unsupported format)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
    if img.format not in ACCEPTED_FORMATS:
        raise DataError(f"{path}: {img.format} images are not accepted "
                        f"(accepted: {', '.join(sorted(set(ACCEPTED_FORMATS.values())))})")
    # An animation or a multi-page file would be judged on its first frame alone; MPO's later
    # frames are a camera's previews of the same shot.
    frames = getattr(img, "n_frames", 1)
    if frames > 1 and img.format != "MPO":
        raise DataError(f"{path}: holds {frames} frames (an animation or a multi-page file); "
                        "save each frame as its own image")
    w, h = img.size
    if w == 0 or h == 0:
        raise DataError(f"{path}: image has zero size")
    if w * h > max_pixels():
        raise DataError(f"{path}: image is {w}x{h} ({w * h / 1e6:.0f} MP), over the limit of "
                        f"{max_pixels() / 1e6:g} MP (--max-pixels)")
    return img


def _load(img: Image.Image, path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
    return img


def shrink_factor(hw: tuple[int, int], size: int) -> int:
    """Integer factor by which an image may be box-reduced before it is resized to ``size``:
    only images more than 8× the model size on their short side are (down to ≥ 4× it), so
    ordinary images keep the one resize, and huge ones never exist as float tensors."""
    f = min(hw) // (4 * size)
    return f if f >= 2 else 1


def _shrunk(img: Image.Image, path: Path, size: int | None) -> Image.Image:
    """``img`` decoded, box-reduced by :func:`shrink_factor` for a model of ``size`` (None: as is).
    JPEGs are decoded at a reduced scale directly."""
    f = shrink_factor((img.height, img.width), size) if size else 1
    if f > 1 and img.format in ("JPEG", "MPO"):
        img.draft(img.mode if img.mode in ("L", "RGB") else "RGB", (img.width // f, img.height // f))
    img = _load(img, path)
    f = shrink_factor((img.height, img.width), size) if size else 1
    if f > 1:
        if img.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
            img = img.convert("RGBA" if img.mode in ("PA",) or "transparency" in img.info else "RGB")
        img = img.reduce(f)
    return img


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any PIL image → ``(H, W, 3)`` uint8, EXIF orientation applied.

    16-bit and 32-bit grayscale is scaled by its own maximum bit depth, palette and
    alpha images are flattened, grayscale is replicated to three channels.
    """
    # Each step below copies the pixels, so steps with nothing to do are skipped: for an
    # upright RGB file they were a tenth of a request's decode time.
    if _orientation(img) not in (None, 1):
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr8[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on black so transparent borders look like background, not noise.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)


def as_rgb(array: np.ndarray) -> np.ndarray:
    """An in-memory ``(H, W)`` grayscale or ``(H, W, 3)`` uint8 image as ``(H, W, 3)``."""
    return np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array


def read_image(path: Path | str, size: int | None = None) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB. ``size``: the model size it is read for;
    a huge image is then box-reduced while it is decoded (see :func:`shrink_factor`)."""
    return decode(Path(path), size=size)[0]


def decode(path: Path, data: bytes | None = None, size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode a file (or ``data``, named ``path``) as ``(H', W', 3)`` uint8 RGB, box-reduced for
    a model of ``size`` when huge; also returns the source ``(H, W)``."""
    img = _open(path, data)
    source = display_size(img)
    return to_rgb_array(_shrunk(img, path, size)), source


def shrink(image: np.ndarray, size: int) -> np.ndarray:
    """An in-memory ``(H, W, 3)`` uint8 image box-reduced as :func:`decode` reduces files."""
    f = shrink_factor(image.shape[:2], size)
    return np.asarray(Image.fromarray(image).reduce(f)) if f > 1 else image


def decode_image(data: bytes, name: str = "upload", size: int | None = None) -> np.ndarray:
    """Decode image file content (an upload) as ``(H, W, 3)`` uint8 RGB; errors name ``name``."""
    return decode(Path(name), data, size)[0]


def read_mask(path: Path | str, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Read a ground-truth mask as ``(H, W)`` uint8 with its raw values (0/255, 0/1, …).

    Binarisation happens later, at the evaluation resolution, so the rule is one option. Every
    common mode reads as its grey level: an alpha channel is never mistaken for defect (LA, RGBA,
    PA), palettes give their colours' brightest channel, 16-bit and 1-bit masks their non-zero
    pixels; other modes are refused. ``expected_hw`` is the image's size; a mismatch is an error
    naming the mask.
    """
    path = Path(path)
    img = _load(_open(path), path)
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("L", "LA"):
        arr = np.asarray(img.getchannel("L"))
    elif img.mode in ("RGB", "RGBA", "P", "PA"):
        arr = np.asarray(img.convert("RGB")).max(axis=2)
    elif img.mode in ("1", "I", "I;16", "I;16B", "I;16L", "F"):
        arr = (np.asarray(img) > 0).astype(np.uint8) * 255
    else:
        raise DataError(f"{path}: mask mode {img.mode} is not supported (use grey, RGB or palette PNGs)")
    if expected_hw is not None and arr.shape[:2] != tuple(expected_hw):
        raise DataError(
            f"{path}: mask is {arr.shape[1]}x{arr.shape[0]} but its image is "
            f"{expected_hw[1]}x{expected_hw[0]}"
        )
    return np.ascontiguousarray(arr, dtype=np.uint8)


def mask_at(path: Path | str | None, image_hw: tuple[int, int], size: int, threshold: int = 0) -> np.ndarray:
    """Ground truth at ``size`` × ``size`` as bool: nearest resize, then ``value > threshold``.

    ``path`` None (a good image) gives an empty mask; ``image_hw`` is the decoded image's size,
    and a mask of another size is an error naming it.
    """
    if path is None:
        return np.zeros((size, size), dtype=bool)
    raw = read_mask(path, image_hw)
    return np.asarray(Image.fromarray(raw).resize((size, size), Image.NEAREST)) > threshold


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, C, H, W)`` float grey levels (0–255) → ``(B, C, size, size)`` whole grey levels.

    The one resize of the pipeline: antialiased bilinear, no crop, rounded half up. The eager
    loader and the exported ONNX graph both run this function, so both feed the model the same
    pixels (up to float rounding of the resampling weights in another runtime).
    """
    x = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x + 0.5).floor().clamp(0, 255)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 → ``(size, size, 3)`` uint8 by :func:`resize_batch`.

    Every image is squashed to one square size so that the aspect ratio never carries
    information (see battery_weld in ``shared/data/README.md``).
    """
    if image.shape[:2] == (size, size):
        return image
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0).float()  # a copy: PIL arrays are read-only
    return resize_batch(x, size)[0].permute(1, 2, 0).to(torch.uint8).numpy()


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """List of ``(S, S, 3)`` uint8 → ``(B, 3, S, S)`` uint8 tensor."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def looks_complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole image file, judged by the format's own end marker or length
    field (PNG's IEND chunk, JPEG's end-of-image marker, BMP's and WebP's file size), so that a
    file still being written is waited for rather than failed. Other formats, and anything not
    recognised, count as complete: decoding then says what is wrong."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data.endswith(b"IEND\xaeB`\x82")
    if data.startswith(b"\xff\xd8"):
        return b"\xff\xd9" in data[-1024:]  # some cameras append a few bytes after the marker
    if data.startswith(b"BM") and len(data) >= 6:
        return int.from_bytes(data[2:6], "little") <= len(data)
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return int.from_bytes(data[4:8], "little") + 8 <= len(data)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        try:
            Image.open(io.BytesIO(data)).load()
        except OSError as exc:
            return "truncated" not in str(exc)
        except Exception:  # noqa: BLE001 - anything else is decoding's to report
            return True
    return True
