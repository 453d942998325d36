"""ELPV solar cells (PyPI ``elpv-dataset``): image-level labels only.

Cells with defect probability 0 are normal, 1 anomalous; 1/3 and 2/3 are left out as
ambiguous. The two cell types (mono, poly) are the categories. Split: a seeded 70 % of the
normal cells to ``train`` (1,055 of 1,508), the rest and every defective cell to ``test``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError
from .types import ANOMALOUS, NORMAL, Sample

TRAIN_FRACTION = 0.7
SPLIT_SEED = 0


def elpv_root() -> Path:
    """The data folder of the installed ``elpv-dataset`` package."""
    try:
        import elpv_dataset
    except ImportError:
        raise DataError("ELPV needs the 'elpv-dataset' package: pip install 'costfilter[elpv]'") from None
    return Path(elpv_dataset.__file__).parent / "data"


def load_elpv(root: Path | None = None, categories: Sequence[str] | None = None) -> list[Sample]:
    """ELPV samples; ``root`` is a folder with ``labels.csv`` (default: the installed package)."""
    root = Path(root) if root is not None and str(root) not in ("", "elpv") else elpv_root()
    labels = root / "labels.csv"
    if not labels.is_file():
        raise DataError(f"{labels}: ELPV labels file not found")
    rows = []
    with open(labels) as fh:
        for line_no, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3:
                raise DataError(f"{labels}:{line_no}: expected 'path probability type'")
            rows.append((parts[0], float(parts[1]), parts[2]))
    types = sorted({r[2] for r in rows})
    wanted = list(categories) if categories else types
    for c in wanted:
        if c not in types:
            raise DataError(f"{labels}: cell type {c!r} not found (have: {', '.join(types)})")
    # One permutation over all normal cells (both types), so a category filter keeps the same split.
    normal_rows = [i for i, r in enumerate(rows) if r[1] == 0.0]
    order = np.random.default_rng(SPLIT_SEED).permutation(len(normal_rows))
    train_rows = {normal_rows[i] for i in order[: int(TRAIN_FRACTION * len(normal_rows))].tolist()}
    samples: list[Sample] = []
    for i, (rel, prob, cat) in enumerate(rows):
        if cat not in wanted or prob not in (0.0, 1.0):
            continue
        if prob == 0.0:
            samples.append(Sample(root / rel, "train" if i in train_rows else "test", NORMAL, cat, "good"))
        else:
            samples.append(Sample(root / rel, "test", ANOMALOUS, cat, "defective"))
    return samples
