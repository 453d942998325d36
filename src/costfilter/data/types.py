"""Typed records that every dataset format produces."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NORMAL = 0
ANOMALOUS = 1
UNKNOWN = -1


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    ``label`` is 0 (normal), 1 (anomalous) or -1 (unknown, e.g. unlabelled folders);
    ``mask`` is the pixel ground truth where the format has one.
    """

    path: Path
    split: str  # "train" or "test"
    label: int = NORMAL
    category: str = ""
    defect: str = "good"
    mask: Path | None = None


def split_of(samples: list[Sample], split: str) -> list[Sample]:
    """The samples of one split, in their original order."""
    return [s for s in samples if s.split == split]


def categories_of(samples: list[Sample]) -> list[str]:
    """Categories in first-seen order."""
    return list(dict.fromkeys(s.category for s in samples))
