"""MVTec AD layout (also MPDD and the sets in ``shared/data``).

``<cat>/train/good/*``, ``<cat>/test/{good,<defect>}/*``, ``<cat>/ground_truth/<defect>/<stem>_mask.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ._common import find_categories, images_in, mask_for
from .types import ANOMALOUS, NORMAL, Sample


def _is_category(path: Path) -> bool:
    return (path / "train").is_dir() or (path / "test").is_dir()


def load_mvtec(root: Path, categories: Sequence[str] | None = None) -> list[Sample]:
    """All train and test samples of one category folder or a root of categories."""
    samples: list[Sample] = []
    for cat_dir in find_categories(root, _is_category, categories, "MVTec AD (<category>/train/good, <category>/test/<type>)"):
        cat = cat_dir.name
        for path in images_in(cat_dir / "train" / "good"):
            samples.append(Sample(path, "train", NORMAL, cat, "good"))
        test_dir = cat_dir / "test"
        if not test_dir.is_dir():
            continue
        for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            defect = defect_dir.name
            gt_dir = cat_dir / "ground_truth" / defect
            for path in images_in(defect_dir):
                if defect == "good":
                    samples.append(Sample(path, "test", NORMAL, cat, defect))
                else:
                    mask = mask_for(path, gt_dir, ("_mask", ""), (".png",)) if gt_dir.is_dir() else None
                    samples.append(Sample(path, "test", ANOMALOUS, cat, defect, mask))
    return samples
