"""Dataset formats → lists of :class:`Sample`. Add a format: write a loader, add a registry line."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import DataError
from .btad import load_btad
from .elpv import load_elpv
from .folder import load_folder
from .imageio import mask_at, read_image, read_mask
from .mvtec import load_mvtec
from .types import ANOMALOUS, NORMAL, UNKNOWN, Sample, categories_of, split_of
from .visa import load_visa

Loader = Callable[[Path, Sequence[str] | None], list[Sample]]

#: format name → loader(root, categories) returning every sample (train and test).
FORMATS: dict[str, Loader] = {
    "mvtec": load_mvtec,
    "mpdd": load_mvtec,  # MPDD uses the MVTec AD layout exactly
    "btad": load_btad,
    "visa": load_visa,
    "folder": load_folder,
    "elpv": load_elpv,
}


def load_dataset(root: Path | str, fmt: str = "mvtec", categories: Sequence[str] | None = None) -> list[Sample]:
    """Load every sample of a dataset root in the given format.

    Args:
        root: dataset root (for ``mvtec``: one category folder or a folder of categories).
        fmt: a key of :data:`FORMATS`.
        categories: restrict to these categories (``None`` = all found).
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown dataset format {fmt!r}; choose one of {', '.join(FORMATS)}")
    root = Path(root)
    if fmt != "elpv" and not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    samples = FORMATS[fmt](root, categories)
    if not samples:
        raise DataError(f"{root}: no images found for format {fmt!r}")
    return samples


__all__ = [
    "ANOMALOUS",
    "FORMATS",
    "NORMAL",
    "UNKNOWN",
    "Sample",
    "categories_of",
    "load_dataset",
    "mask_at",
    "read_image",
    "read_mask",
    "split_of",
]
