"""Writing ``predict`` results: overlay and mask PNGs, results.csv and results.jsonl."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .atomic import write_text
from .data import read_image
from .errors import CostfilterError
from .results import Prediction, Region
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


def render(pred: Prediction, image: np.ndarray, pixel_threshold: float, min_region_area: int = 1
           ) -> tuple[list[Region], np.ndarray, np.ndarray, np.ndarray]:
    """A prediction's defect regions, its overlay ``(H, W, 3)`` (heat-map, region outlines and
    boxes, decision label), its ``(H, W)`` 0/255 mask and its float map, all at the source size."""
    amap = pred.map_at_original_size()
    pixel = pred.pixel_threshold if pred.pixel_threshold is not None else pixel_threshold
    regions = pred.regions(pixel, min_region_area)
    label = f"{pred.decision.upper()}  score {pred.score:.3f}"
    picture = overlay(image, amap, pixel, boxes=[r.box for r in regions], label=label)
    return regions, picture, mask_image(amap, pixel, pred.size), amap


def region_dicts(regions: Sequence[Region]) -> list[dict]:
    """Regions as JSON-ready dicts (rounded)."""
    return [{"box": list(r.box), "area_px": r.area_px, "area_pct": round(r.area_pct, 4), "peak": round(r.peak, 6),
             "mean": round(r.mean, 6)} for r in regions]


def write_predictions(preds: Sequence[Prediction], out: Path, pixel_threshold: float, min_region_area: int = 1,
                      images: Sequence[np.ndarray] | None = None) -> list[dict]:
    """For each prediction: ``<stem>_overlay.png`` (heat-map, region outlines and boxes, decision)
    and ``<stem>_mask.png``; then ``results.csv`` (one row per image) and ``results.jsonl``
    (with the regions). Returns the JSONL records."""
    records = []
    for i, (pred, stem) in enumerate(zip(preds, _unique_stems([p.path for p in preds]))):
        image = images[i] if images is not None else read_image(pred.path)
        regions, picture, mask, _ = render(pred, image, pixel_threshold, min_region_area)
        save_png(picture, out / f"{stem}_overlay.png")
        save_png(mask, out / f"{stem}_mask.png")
        records.append({
            "image": pred.path,
            "score": round(pred.score, 6),
            "decision": pred.decision,
            "typical_score": round(pred.typical_score, 6),
            "n_regions": len(regions),
            "defect_area_pct": round(sum(r.area_pct for r in regions), 4),
            "overlay": f"{stem}_overlay.png",
            "mask": f"{stem}_mask.png",
            "regions": region_dicts(regions),
        })
    buf = io.StringIO()
    if records:
        w = csv.DictWriter(buf, fieldnames=[k for k in records[0] if k != "regions"], extrasaction="ignore")
        w.writeheader()
        w.writerows(records)
    write_text(out / "results.csv", buf.getvalue())
    write_text(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return records
