"""Screening the "good" training images for the defective ones a folder always holds.

Every fit image is scored leave-one-image-out against a memory bank of the others (the memory
bank's own calibration scores, or a memory-bank pass for trained methods). A defective image
stands out from the rest the way a defective test part does, so its score is an outlier among
the training images' scores: flagged by a robust rule that needs no labels (median + k·MAD).
``screening.contamination`` says what to do: ``0`` flag only, ``auto`` remove the flagged
images, a fraction ``f`` remove the ``f`` of images with the highest scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import CostfilterError
from .provenance import file_sha256

if TYPE_CHECKING:
    from .data import Sample

#: the MAD of a normal distribution times this is its standard deviation
MAD_TO_SIGMA = 1.4826


@dataclass
class FlaggedImage:
    """A training image whose leave-one-out score is an outlier (``z``: robust z-score)."""

    path: str
    score: float
    z: float
    removed: bool = False
    #: its rows' owner index in the fitted memory bank (None: not in it), so its map can be drawn
    #: without its own rows
    owner: int | None = None


@dataclass
class Screening:
    """What screening found and did: the rule, every flagged image, those removed from the fit."""

    rule: str
    contamination: str
    n_images: int
    flagged: list[FlaggedImage] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    #: where the scores came from: the fit's own leave-one-out calibration, or a memory-bank pass
    scores_from: str = "leave-one-out"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Screening:
        data = dict(data)
        data["flagged"] = [FlaggedImage(**f) for f in data.get("flagged", [])]
        return cls(**data)


def robust_z(scores: Sequence[float]) -> np.ndarray:
    """``(score − median) / (1.4826 · MAD)``; a zero MAD (half the images score alike) falls back
    to the mean absolute deviation, then to 1, so ties never divide by zero."""
    s = np.asarray(scores, dtype=np.float64)
    med = np.median(s)
    spread = MAD_TO_SIGMA * np.median(np.abs(s - med))
    if spread <= 0:
        spread = float(np.mean(np.abs(s - med))) * np.sqrt(np.pi / 2) or 1.0
    return (s - med) / spread


def screen(paths: Sequence[str], scores: Sequence[float], contamination: str | float, k: float,
           scores_from: str = "leave-one-out") -> Screening:
    """Flag the images whose robust z-score is above ``k``, and choose which to remove for
    ``contamination`` (``"0"``, ``"auto"`` or a fraction); at least two images always stay."""
    z = robust_z(scores)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    flagged = [FlaggedImage(str(paths[i]), float(scores[i]), float(z[i])) for i in order if z[i] > k]
    if contamination == "auto":
        remove = [f.path for f in flagged]
    else:
        n = round(float(contamination) * len(paths))
        remove = [str(paths[i]) for i in order[:n]]
    remove = remove[: max(0, len(paths) - 2)]
    gone = set(remove)
    for f in flagged:
        f.removed = f.path in gone
    return Screening(f"robust z-score > {k:g} (median + {k:g}·1.4826·MAD of the leave-one-out scores)",
                     str(contamination), len(paths), flagged, remove, scores_from)


def screening_table(s: Screening, limit: int = 20) -> str:
    """The flagged images as a Markdown table (the highest ``limit``), with a line on top."""
    from .tables import format_table

    head = (f"flagged {len(s.flagged)} of {s.n_images} training images as possible defects ({s.rule}); "
            f"removed from the fit: {len(s.removed)} (contamination {s.contamination})")
    if not s.flagged and not s.removed:
        return head
    rows = [[f.path, f"{f.score:.4f}", f"{f.z:.1f}", "yes" if f.removed else "no"] for f in s.flagged[:limit]]
    extra = [p for p in s.removed if p not in {f.path for f in s.flagged}]
    rows += [[p, "", "", "yes (by fraction)"] for p in extra[:limit]]
    more = len(s.flagged) + len(extra) - len(rows)
    return head + "\n" + format_table(["image", "score", "z", "removed"], rows) + (f"\n… and {more} more" if more > 0 else "")


#: fewest distinct good images a fit accepts: thresholds come from images scored against the
#: others' patches, and one image (or copies of one) has no others, so its thresholds mean nothing
MIN_DISTINCT_IMAGES = 2


def distinct_hashes(train: Sequence[Sample]) -> list[str]:
    """The SHA-256 of each fit image; fewer than :data:`MIN_DISTINCT_IMAGES` distinct contents
    is a one-line error."""
    hashes = [file_sha256(x.path) for x in train]
    distinct = len(set(hashes))
    if distinct < MIN_DISTINCT_IMAGES:
        copies = f" ({len(hashes)} files, all the same image)" if len(hashes) > 1 else ""
        raise CostfilterError(f"a fit needs at least {MIN_DISTINCT_IMAGES} different good images, got {distinct}"
                              f"{copies}: with fewer, no image can be scored as unseen, so no threshold can be set")
    return hashes
