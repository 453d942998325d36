"""Decoding images and masks of any mode into arrays, with one-line errors."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    """True for a regular, visible file with an image extension."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def _open(path: Path, data: bytes | None = None) -> Image.Image:
    """Decode ``path`` (or ``data``, named ``path`` in errors) with one-line errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data) if data is not None else path)
            img.load()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file (or an unsupported format)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
    return img


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any PIL image → ``(H, W, 3)`` uint8, EXIF orientation applied.

    16-bit and 32-bit grayscale is scaled by its own maximum bit depth, palette and
    alpha images are flattened, grayscale is replicated to three channels.
    """
    img = ImageOps.exif_transpose(img) or img
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
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def as_rgb(array: np.ndarray) -> np.ndarray:
    """An in-memory ``(H, W)`` grayscale or ``(H, W, 3)`` uint8 image as ``(H, W, 3)``."""
    return np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array


def read_image(path: Path | str) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB."""
    path = Path(path)
    img = _open(path)
    if img.width == 0 or img.height == 0:
        raise DataError(f"{path}: image has zero size")
    return to_rgb_array(img)


def decode_image(data: bytes, name: str = "upload") -> np.ndarray:
    """Decode image file content (an upload) as ``(H, W, 3)`` uint8 RGB; errors name ``name``."""
    img = _open(Path(name), data)
    if img.width == 0 or img.height == 0:
        raise DataError(f"{name}: image has zero size")
    return to_rgb_array(img)


def read_mask(path: Path | str, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Read a ground-truth mask as ``(H, W)`` uint8 with its raw values (0/255, 0/1, …).

    Binarisation happens later, at the evaluation resolution, so the rule is one option.
    ``expected_hw`` is the image's size; a mismatch is an error naming the mask.
    """
    path = Path(path)
    img = ImageOps.exif_transpose(_open(path))
    arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2)
    if arr.dtype != np.uint8:
        arr = (arr > 0).astype(np.uint8) * 255
    if expected_hw is not None and arr.shape[:2] != tuple(expected_hw):
        raise DataError(
            f"{path}: mask is {arr.shape[1]}x{arr.shape[0]} but its image is "
            f"{expected_hw[1]}x{expected_hw[0]}"
        )
    return arr


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
