"""BTAD layout: ``<cat>/train/ok``, ``<cat>/test/{ok,ko}``, ``<cat>/ground_truth/ko/<stem>.{png,bmp}``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ._common import find_categories, images_in, mask_for
from .types import ANOMALOUS, NORMAL, Sample


def _is_category(path: Path) -> bool:
    return (path / "train" / "ok").is_dir() or (path / "test" / "ok").is_dir()


def load_btad(root: Path, categories: Sequence[str] | None = None) -> list[Sample]:
    """All train and test samples of one BTAD product folder (``01``…) or the whole root."""
    samples: list[Sample] = []
    for cat_dir in find_categories(root, _is_category, categories, "BTAD (<product>/train/ok, <product>/test/ok|ko)"):
        cat = cat_dir.name
        for path in images_in(cat_dir / "train" / "ok"):
            samples.append(Sample(path, "train", NORMAL, cat, "good"))
        if (cat_dir / "test" / "ok").is_dir():
            for path in images_in(cat_dir / "test" / "ok"):
                samples.append(Sample(path, "test", NORMAL, cat, "good"))
        if (cat_dir / "test" / "ko").is_dir():
            gt_dir = cat_dir / "ground_truth" / "ko"
            for path in images_in(cat_dir / "test" / "ko"):
                mask = mask_for(path, gt_dir, ("", "_mask"), (".png", ".bmp")) if gt_dir.is_dir() else None
                samples.append(Sample(path, "test", ANOMALOUS, cat, "ko", mask))
    return samples
