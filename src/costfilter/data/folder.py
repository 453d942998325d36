"""A plain folder of the user's images.

Either a folder of images only (all normal: enough to fit), or a folder with sub-folders:
``good/`` or ``normal/`` (normal), any other sub-folder (anomalous, its name the defect type),
and optionally ``masks/`` holding ``<stem>.png`` or ``<stem>_mask.png`` per anomalous image.
Every normal image is ``train``; every image is also listed as ``test``, so keep separate
folders for fitting and testing (fit on one, test on the other).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError
from ._common import images_in, mask_for
from .imageio import list_images
from .types import ANOMALOUS, NORMAL, Sample

_NORMAL_NAMES = ("good", "normal", "ok")


def load_folder(root: Path, categories: Sequence[str] | None = None) -> list[Sample]:
    """Samples of a folder dataset; ``categories`` is ignored (one category named after the folder)."""
    cat = root.name
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = list_images(root)
    if not subdirs:
        files = images_in(root)
        return [Sample(p, split, NORMAL, cat, "good") for split in ("train", "test") for p in files]
    normal_dirs = [p for p in subdirs if p.name.lower() in _NORMAL_NAMES]
    if loose and not normal_dirs:
        raise DataError(f"{root}: mixes loose images with sub-folders; put normal images in {root / 'good'}")
    samples: list[Sample] = []
    for d in normal_dirs:
        for p in images_in(d):
            samples += [Sample(p, "train", NORMAL, cat, "good"), Sample(p, "test", NORMAL, cat, "good")]
    mask_dir = root / "masks"
    for d in subdirs:
        if d in normal_dirs or d == mask_dir:
            continue
        for p in images_in(d):
            mask = mask_for(p, mask_dir / d.name if (mask_dir / d.name).is_dir() else mask_dir,
                            ("_mask", ""), (".png", ".bmp", ".tif")) if mask_dir.is_dir() else None
            samples.append(Sample(p, "test", ANOMALOUS, cat, d.name, mask))
    return samples
