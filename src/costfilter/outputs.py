"""Writing ``predict`` results: overlay and mask PNGs, results.csv and results.jsonl."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .api import Prediction
from .atomic import write_text
from .data import read_image
from .errors import CostfilterError
from .viz import mask_image, overlay, save_png


def prepare_out_dir(out: Path, force: bool) -> None:
    """Create ``out``; an existing non-empty folder is refused unless ``force``."""
    if out.exists() and not out.is_dir():
        raise CostfilterError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CostfilterError(f"{out}: folder is not empty (use --force to write into it)")
    out.mkdir(parents=True, exist_ok=True)


def _unique_stems(paths: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = Path(p).stem
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        stems.append(stem if n == 0 else f"{stem}_{n}")
    return stems


def write_predictions(preds: Sequence[Prediction], out: Path, image_threshold: float, pixel_threshold: float,
                      images: Sequence[np.ndarray] | None = None) -> None:
    """For each prediction: ``<stem>_overlay.png`` and ``<stem>_mask.png``; then the two tables."""
    rows = []
    for i, (pred, stem) in enumerate(zip(preds, _unique_stems([p.path for p in preds]))):
        image = images[i] if images is not None else read_image(pred.path)
        amap = pred.map_at_original_size()
        save_png(overlay(image, amap, pixel_threshold), out / f"{stem}_overlay.png")
        save_png(mask_image(amap, pixel_threshold, pred.size), out / f"{stem}_mask.png")
        rows.append({
            "image": pred.path,
            "score": round(pred.score, 6),
            "decision": pred.decision,
            "image_threshold": round(image_threshold, 6),
            "anomalous_area_pct": round(100.0 * float((amap > pixel_threshold).mean()), 4),
            "overlay": f"{stem}_overlay.png",
            "mask": f"{stem}_mask.png",
        })
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    write_text(out / "results.csv", buf.getvalue())
    write_text(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
