"""Writing ``predict`` results: overlay and mask PNGs, results.csv and results.jsonl."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import check_folder_writable, pid_alive, remove_stale_temps, write_text
from .data import read_image
from .errors import CostfilterError
from .results import Prediction, Region, map_regions
from .viz import above_window, overlay, resize_map, save_png

#: the files a ``predict`` run writes besides one overlay and one mask per image
RUN_FILES = ("results.csv", "results.jsonl", "run-record.json")


#: what the hidden folder a run is staged in is called (``<prefix><pid>.<random>``)
PARTIAL_PREFIX = ".costfilter-partial-"


def check_out_dir(out: Path, inputs: Sequence[Path], sources: Sequence[Path | str] = ()) -> None:
    """Refuse an output folder that would mix with the inputs: a source folder itself, a folder
    above one, or one that holds an input file. Outputs written there could overwrite inputs,
    and a later ``--force`` run would delete what an earlier run wrote (F1). A folder *inside* a
    source folder is fine: its contents are never listed as inputs."""
    target = os.path.realpath(out)
    inside = target.rstrip(os.sep) + os.sep
    for source in sources:
        src = os.path.realpath(source)
        if src == target:
            raise CostfilterError(f"{out}: is the input folder {source}; give --out a folder of its own")
        if src.startswith(inside):
            raise CostfilterError(f"{out}: holds the input {source}; give --out a folder of its own")
    for p in inputs:
        if os.path.realpath(p).startswith(inside):
            raise CostfilterError(f"{out}: holds the input {p}; give --out a folder of its own")


def prepare_out_dir(out: Path, force: bool) -> None:
    """Create ``out`` (or check that files can be written into it); an existing non-empty folder
    is refused unless ``force``, and with it the files of an earlier ``predict`` run there are
    removed (nothing else), so no stale overlay stays beside the new results. What a killed run
    left (its hidden partial folder) is removed first."""
    if out.exists() and not out.is_dir():
        raise CostfilterError(f"{out}: exists and is not a folder")
    check_folder_writable(out)
    if out.is_dir():
        _remove_stale_partials(out)
        if any(out.iterdir()):
            if not force:
                raise CostfilterError(f"{out}: folder is not empty (use --force to write into it)")
            _remove_earlier_run(out)
    out.mkdir(parents=True, exist_ok=True)


def _remove_stale_partials(out: Path) -> None:
    for p in out.glob(f"{PARTIAL_PREFIX}*"):
        pid = p.name[len(PARTIAL_PREFIX):].split(".", 1)[0]
        if p.is_dir() and not (pid.isdigit() and pid_alive(int(pid))):
            shutil.rmtree(p, ignore_errors=True)
    remove_stale_temps(out, whole_folder=True)


def _remove_earlier_run(out: Path) -> None:
    """Only files an earlier run wrote: overlay and mask names its ``results.jsonl`` lists
    (plain names inside ``out`` with our suffixes) and the run files."""
    earlier = out / "results.jsonl"
    if earlier.is_file():
        for line in earlier.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            for key, suffix in (("overlay", "_overlay.png"), ("mask", "_mask.png")):
                name = rec.get(key) if isinstance(rec, dict) else None
                if isinstance(name, str) and Path(name).name == name and name.endswith(suffix):
                    (out / name).unlink(missing_ok=True)
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A hidden folder inside ``out`` to write a run into; its files move into ``out`` when the
    block ends, and the folder is removed whatever happens, so an interrupted run leaves nothing
    (a killed one leaves the folder, which the next run into ``out`` removes)."""
    stage = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{os.getpid()}.", dir=out))
    try:
        yield stage
        for f in sorted(stage.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _unique_stems(paths: Sequence[str]) -> list[str]:
    """A picture stem per image: its file stem, with ``_2``, ``_3``… where that is taken (by
    another image's stem or an earlier suffixed one), so no two images share an overlay."""
    taken: set[str] = set()
    stems = []
    for p in paths:
        stem = base = Path(p).stem
        n = 1
        while stem.lower() in taken:  # case-insensitive filesystems fold X and x together
            n += 1
            stem = f"{base}_{n}"
        taken.add(stem.lower())
        stems.append(stem)
    return stems


def csv_safe(value: object) -> object:
    """A CSV cell that a spreadsheet will not run as a formula: text starting with ``= + - @``
    (or a tab or carriage return) gets a leading apostrophe."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


#: Overlays, masks and maps are drawn at most this many pixels on their long side; regions are
#: still reported in source pixels. A 10,000 × 10,000 image would otherwise cost gigabytes.
RENDER_MAX_SIDE = 2048


def render_size(hw: tuple[int, int]) -> tuple[int, int]:
    """The ``(h, w)`` pictures of an image of source size ``hw`` are drawn at."""
    f = max(hw) / RENDER_MAX_SIDE
    return (max(1, round(hw[0] / f)), max(1, round(hw[1] / f))) if f > 1 else tuple(hw)


def read_for_render(path: str | Path) -> np.ndarray:
    """An image file decoded near its render size (huge images are box-reduced while decoded)."""
    return read_image(path, size=RENDER_MAX_SIDE // 4)


@dataclasses.dataclass(frozen=True)
class Rendering:
    """What a prediction's pictures are drawn from, at :func:`render_size` ``hw``: its defect
    ``regions`` (source pixels), their ``boxes`` in picture pixels, the 0/255 ``mask``
    (``(h, w)``), the pixel threshold used, the picture's ``label``, and the float map at ``hw``
    (``amap``, resized when first asked for: the service never needs it)."""

    hw: tuple[int, int]
    regions: list[Region]
    boxes: list[tuple[int, int, int, int]]
    mask: np.ndarray
    pixel: float
    label: str
    #: the prediction's own map, and the map at ``hw`` where finding the regions needed it
    own_map: np.ndarray = dataclasses.field(repr=False)
    resized: np.ndarray | None = dataclasses.field(default=None, repr=False)

    @property
    def amap(self) -> np.ndarray:
        """The float map at ``hw``."""
        return self.resized if self.resized is not None else resize_map(self.own_map, self.hw)


def picture_boxes(boxes: Sequence[Sequence[int]], size: Sequence[int], hw: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Region boxes ``(x0, y0, x1, y1)`` in source pixels (an image of ``size`` = ``(H, W)``) at
    picture size ``hw``."""
    sy, sx = hw[0] / size[0], hw[1] / size[1]
    return [(int(x0 * sx), int(y0 * sy), int(x1 * sx), int(y1 * sy)) for x0, y0, x1, y1 in boxes]


def picture_label(decision: str, score: float) -> str:
    """The text drawn on an overlay."""
    return f"{decision.upper()}  score {score:.3f}"


def analyse(pred: Prediction, pixel_threshold: float, min_region_area: int = 1) -> Rendering:
    """A prediction's regions, map and mask at its picture size (the prediction's own pixel
    threshold, where it has one, over ``pixel_threshold``)."""
    hw = render_size(pred.size)
    pixel = pred.pixel_threshold if pred.pixel_threshold is not None else pixel_threshold
    label = picture_label(pred.decision, pred.score)
    mask = np.zeros(hw, np.uint8)
    window = above_window(pred.anomaly_map, hw, pixel)  # most images on a line: None, nothing resized
    if window is None:
        return Rendering(hw, [], [], mask, pixel, label, pred.anomaly_map)
    (top, left), values = window
    regions = map_regions(values, pred.size, pixel, min_region_area, at=hw, origin=(top, left))
    mask[top:top + values.shape[0], left:left + values.shape[1]] = (values > pixel).astype(np.uint8) * 255
    whole = values if values.shape == tuple(hw) else None
    return Rendering(hw, regions, picture_boxes([r.box for r in regions], pred.size, hw), mask, pixel, label,
                     pred.anomaly_map, whole)


def render(pred: Prediction, image: np.ndarray, pixel_threshold: float, min_region_area: int = 1
           ) -> tuple[list[Region], np.ndarray, np.ndarray, np.ndarray]:
    """A prediction's defect regions (in source pixels), its overlay ``(h, w, 3)`` (heat-map,
    region outlines and boxes, decision label), its ``(h, w)`` 0/255 mask and its float map, all
    at :func:`render_size` (the source size unless that is larger than :data:`RENDER_MAX_SIDE`).
    ``image`` is the source image or any copy of it at another size."""
    r = analyse(pred, pixel_threshold, min_region_area)
    amap = r.amap
    picture = overlay(at_size(image, r.hw), amap, r.pixel, boxes=r.boxes, label=r.label)
    return r.regions, picture, r.mask, amap


def at_size(image: np.ndarray, hw: Sequence[int]) -> np.ndarray:
    """``image`` resized (bilinear) to ``hw`` = ``(h, w)`` for drawing on, unless it is that size."""
    if image.shape[:2] == tuple(hw):
        return image
    return np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), Image.BILINEAR))


def region_dicts(regions: Sequence[Region]) -> list[dict]:
    """Regions as JSON-ready dicts (rounded)."""
    return [{"box": list(r.box), "area_px": r.area_px, "area_pct": round(r.area_pct, 4), "peak": round(r.peak, 6),
             "mean": round(r.mean, 6)} for r in regions]


def result_record(pred: Prediction, regions: Sequence[Region], overlay_name: str | None, mask_name: str | None
                  ) -> dict:
    """One image's row of ``results.jsonl`` (and of a Ray run's ``results.parquet``); models with
    several learned categories add the ``category`` each image was scored as."""
    return {
        "image": pred.path,
        "score": round(pred.score, 6),
        "decision": pred.decision,
        **({"category": pred.category} if pred.category is not None else {}),
        "typical_score": round(pred.typical_score, 6),
        "n_regions": len(regions),
        "defect_area_pct": round(sum(r.area_pct for r in regions), 4),
        "overlay": overlay_name,
        "mask": mask_name,
        "regions": region_dicts(regions),
    }


def error_record(path: str, message: str) -> dict:
    """The row of an image that could not be scored: ``decision`` ``error`` and the reason."""
    return {"image": path, "score": None, "decision": "error", "typical_score": None, "n_regions": 0,
            "defect_area_pct": None, "overlay": None, "mask": None, "regions": [], "error": message}


def write_predictions(preds: Sequence[Prediction], out: Path, pixel_threshold: float, min_region_area: int = 1,
                      images: Sequence[np.ndarray] | None = None, errors: Sequence[tuple[str, str]] = (),
                      order: Sequence[str] | None = None) -> list[dict]:
    """For each prediction: ``<stem>_overlay.png`` (heat-map, region outlines and boxes, decision)
    and ``<stem>_mask.png``; then ``results.csv`` (one row per image) and ``results.jsonl``
    (with the regions). ``errors``: ``(path, message)`` of images that could not be scored,
    written as ``error`` rows; ``order``: the input paths, the order rows are written in.
    Returns the JSONL records."""
    records = []
    for i, (pred, stem) in enumerate(zip(preds, _unique_stems([p.path for p in preds]))):
        image = images[i] if images is not None else read_for_render(pred.path)
        regions, picture, mask, _ = render(pred, image, pixel_threshold, min_region_area)
        save_png(picture, out / f"{stem}_overlay.png")
        save_png(mask, out / f"{stem}_mask.png")
        records.append(result_record(pred, regions, f"{stem}_overlay.png", f"{stem}_mask.png"))
    records += [error_record(p, m) for p, m in errors]
    if order is not None:
        rank = {str(p): i for i, p in enumerate(order)}
        records.sort(key=lambda r: rank.get(r["image"], len(rank)))
    fields: list[str] = []
    for r in records:
        fields += [k for k in r if k != "regions" and k not in fields]
    buf = io.StringIO()
    if records:
        w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows({k: csv_safe(v) for k, v in r.items()} for r in records)
    write_text(out / "results.csv", buf.getvalue())
    write_text(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return records
