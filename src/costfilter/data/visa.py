"""VisA raw layout with its official split file.

``<root>/split_csv/1cls.csv`` (columns ``object,split,label,image,mask``, paths relative to
``root``), images under ``<cat>/Data/Images/{Normal,Anomaly}``, masks under
``<cat>/Data/Masks/Anomaly`` (values 0 and a class index; binarise with ``> 0``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError
from .types import ANOMALOUS, NORMAL, Sample

_COLUMNS = {"object", "split", "label", "image", "mask"}


def load_visa(root: Path, categories: Sequence[str] | None = None) -> list[Sample]:
    """Samples listed in ``split_csv/1cls.csv``; every listed file must exist."""
    split_file = root / "split_csv" / "1cls.csv"
    if not split_file.is_file():
        raise DataError(f"{split_file}: VisA split file not found (expected the raw VisA layout)")
    with open(split_file, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not _COLUMNS <= set(reader.fieldnames):
            raise DataError(f"{split_file}: expected columns {', '.join(sorted(_COLUMNS))}")
        rows = list(reader)
    known = list(dict.fromkeys(r["object"] for r in rows))
    if categories:
        missing = [c for c in categories if c not in known]
        if missing:
            raise DataError(f"{split_file}: category {missing[0]!r} not listed (have: {', '.join(known)})")
    wanted = set(categories or known)
    samples: list[Sample] = []
    for line, row in enumerate(rows, start=2):
        if row["object"] not in wanted:
            continue
        split = row["split"].strip().lower()
        if split not in ("train", "test"):
            raise DataError(f"{split_file}:{line}: split must be train or test, got {row['split']!r}")
        path = root / row["image"]
        if not path.is_file():
            raise DataError(f"{path}: listed in {split_file.name} line {line} but not found")
        anomalous = row["label"].strip().lower() == "anomaly"
        mask = None
        if anomalous and row["mask"].strip():
            mask = root / row["mask"]
            if not mask.is_file():
                raise DataError(f"{mask}: listed in {split_file.name} line {line} but not found")
        samples.append(
            Sample(path, split, ANOMALOUS if anomalous else NORMAL, row["object"],
                   "anomaly" if anomalous else "good", mask)
        )
    return samples
