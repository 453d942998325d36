"""``costfilter predict MODEL SOURCE… --engine ray``: score an archive with a pool of Ray actors.

Each actor opens the model once (checkpoint or ``.onnx``) and scores batches of paths: it reads
the file, hashes it, decodes and resizes it, runs the model and returns one row per image
(:data:`~costfilter.distributed.store.SCHEMA`). Overlays and masks (``save_maps``) are written by the
actors themselves, so ``out`` must be on a filesystem every node sees. The driver only collects
rows into a :class:`~costfilter.distributed.store.ResultStore`.

Scores equal the local ``predict`` path's: the same decode, resize, model and region code run,
only batched differently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..data.imageio import decode, set_max_pixels
from ..errors import CostfilterError
from ..results import Prediction
from ..sources import path_key, read_bytes
from .store import SCHEMA, ResultStore

#: the rows actors return: the stored columns and whether the image was scored, skipped or failed
ROW_SCHEMA = SCHEMA.append(pa.field("status", pa.string()))


def picture_stem(path: str) -> str:
    """File stem for an image's overlay and mask, unique per source path and the same in every
    run (actors name pictures independently, and a resumed run must not duplicate them)."""
    return f"{Path(path).stem}-{hashlib.sha256(path.encode()).hexdigest()[:10]}"


def _error_row(path: str, sha: str | None, message: str, model_sha: str | None) -> dict[str, Any]:
    return {"image": path, "sha256": sha, "decision": "error", "error": message, "model_sha256": model_sha,
            "status": "error"}


class ImageScorer:
    """One Ray actor: the model, opened once, scoring batches of image paths.

    ``model_sha256``: the model file's SHA-256, stored in every row; ``done``: ``resolved path →
    sha256`` of images already scored (skipped when the file is unchanged);
    ``out`` + ``save_maps``: where overlays and masks go; ``threads``: torch / onnxruntime threads
    (the CPUs Ray gave the actor); ``device`` / ``precision``: where a checkpoint runs (``cuda``:
    the GPU Ray assigned the actor, the only one it sees).
    """

    def __init__(self, model: str, *, model_sha256: str, done: dict[str, str], out: str, save_maps: bool,
                 threads: int, max_pixels: int, sign_key: str | None = None, device: str = "cpu",
                 precision: str = "fp32"):
        import torch

        from ..loading import is_onnx

        torch.set_num_threads(max(1, threads))
        set_max_pixels(max_pixels)
        if is_onnx(model):
            from ..export import OnnxDetector

            self.det: Any = OnnxDetector(model, threads=threads, sign_key=sign_key)
        else:
            from ..api import Detector

            self.det = Detector.load(model, progress=False, sign_key=sign_key, device=device, precision=precision)
        self.done, self.out, self.save_maps = done, Path(out), save_maps
        self.model_sha = model_sha256
        cfg = self.det.config
        # Tiled models cut tiles from the full-size source; others read huge images box-reduced.
        self.decode_size = None if cfg.tiling.size else cfg.features.image_size
        self.pixel = self.det.thresholds.pixel if self.det.thresholds else 0.0
        self.min_area = cfg.calibration.min_region_area

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """``batch["images"]``: lists of paths, each scored as one model batch → one row per
        path (:data:`ROW_SCHEMA`)."""
        return pa.concat_tables([self.score([str(p) for p in chunk]) for chunk in batch["images"]])

    def score(self, paths: list[str]) -> pa.Table:
        """Rows (:data:`ROW_SCHEMA`) for ``paths``, run through the model as one batch."""
        rows: list[dict[str, Any]] = []
        todo: list[tuple[str, str, np.ndarray, tuple[int, int]]] = []
        for path in paths:
            try:
                data = read_bytes(path)
            except Exception as exc:  # noqa: BLE001 - local OSError or a remote filesystem's own error
                message = f"{path}: cannot read ({type(exc).__name__}: {exc})"
                rows.append(_error_row(path, None, message, self.model_sha))
                continue
            sha = hashlib.sha256(data).hexdigest()
            if self.done.get(path_key(path)) == sha:
                rows.append({"image": path, "sha256": sha, "status": "skipped"})
                continue
            try:
                image, source = decode(Path(path), data, size=self.decode_size)
            except CostfilterError as exc:
                rows.append(_error_row(path, sha, str(exc), self.model_sha))
                continue
            todo.append((path, sha, image, source))
        for (path, sha, image, source), pred in zip(todo, self._predict([t[2] for t in todo])):
            if isinstance(pred, str):
                rows.append(_error_row(path, sha, f"{path}: {pred}", self.model_sha))
            else:
                rows.append(self._row(dataclasses.replace(pred, path=path, size=tuple(source)), image, sha))
        return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)

    def _predict(self, images: list[np.ndarray]) -> list[Prediction | str]:
        """Predictions of decoded images; if the batch fails, each image alone, so one bad
        image costs one error row (its message), not the batch."""
        if not images:
            return []
        try:
            return list(self.det.predict(images))
        except Exception as exc:  # noqa: BLE001 - an image's failure becomes its row, not the job's end
            if len(images) == 1:
                first = str(exc).splitlines()[0] if str(exc) else ""
                return [f"scoring failed ({type(exc).__name__}: {first})"]
        return [self._predict([image])[0] for image in images]

    def _row(self, pred: Prediction, image: np.ndarray, sha: str) -> dict[str, Any]:
        from ..result_files import render, render_size, result_record
        from ..viz import save_png

        if self.save_maps:
            stem = picture_stem(pred.path)
            regions, picture, mask, _ = render(pred, image, self.pixel, self.min_area)
            overlay_name, mask_name = f"{stem}_overlay.png", f"{stem}_mask.png"
            save_png(picture, self.out / overlay_name)
            save_png(mask, self.out / mask_name)
        else:
            regions = pred.regions(self.pixel, self.min_area, at=render_size(pred.size))
            overlay_name = mask_name = None
        row = result_record(pred, regions, overlay_name, mask_name)
        row.update(regions=json.dumps(row["regions"]), sha256=sha, model_sha256=self.model_sha, error=None,
                   status="scored", score=float(pred.score), typical_score=float(pred.typical_score))
        return row


@dataclasses.dataclass
class RayRun:
    """What a Ray scoring job did: rows ``scored`` now, ``skipped`` (already in the results),
    ``errors``; the final table; seconds from the first row requested to the last received."""

    scored: int
    skipped: int
    errors: int
    seconds: float
    table: pa.Table
    decisions: dict[str, int]


def predict_on_ray(model: Path | str, paths: Sequence[str], out: Path, *, model_sha256: str,
                   actors: int = 2, batch_size: int = 8, cpus_per_actor: float = 1, gpus_per_actor: float = 0,
                   save_maps: bool = False, sign_key: str | None = None, max_pixels: int = 40_000_000,
                   force: bool = False, progress: bool = True, flush_rows: int = 256, flush_s: float = 30.0,
                   on_flush: Callable[[ResultStore], None] | None = None) -> RayRun:
    """Score ``paths`` with ``actors`` Ray actors (Ray must be up: :func:`~.session.ray_session`)
    into ``out/results.parquet``, skipping images already scored there by this model
    (``model_sha256``: the model file's SHA-256).

    ``on_flush`` is called after each part file is written (progress hooks, tests)."""
    import ray
    from tqdm.auto import tqdm

    if not paths:
        raise CostfilterError("no images to score")
    if actors < 1 or batch_size < 1 or cpus_per_actor <= 0 or gpus_per_actor < 0:
        raise CostfilterError("--actors and --batch-size must be ≥ 1, --cpus-per-actor > 0, --gpus-per-actor ≥ 0")
    device = "cpu"
    if gpus_per_actor > 0:
        from ..loading import is_onnx

        if is_onnx(model):
            raise CostfilterError("--gpus-per-actor: an exported .onnx model runs on the CPU; give the checkpoint")
        have = ray.cluster_resources().get("GPU", 0)
        if have < gpus_per_actor:
            raise CostfilterError(f"--gpus-per-actor {gpus_per_actor:g}: the Ray cluster has {have:g} GPU(s)")
        device = "cuda"  # Ray makes the actor's GPU its only visible one
    from ..compute import default

    store = ResultStore(out, model_sha256, force=force, flush_rows=flush_rows, flush_s=flush_s, on_flush=on_flush)
    done = store.done()
    ray.data.DataContext.get_current().enable_progress_bars = False
    # Each item is one model batch, cut as the local path cuts them: the backbone's kernels
    # round differently at other batch sizes (≈1e-6 relative), so the same cut gives the same scores.
    chunks = [list(paths[i : i + batch_size]) for i in range(0, len(paths), batch_size)]
    ds = ray.data.from_items([{"images": c} for c in chunks])
    scored = ds.map_batches(
        ImageScorer, batch_size=1, batch_format="numpy", num_cpus=cpus_per_actor, num_gpus=gpus_per_actor,
        compute=ray.data.ActorPoolStrategy(size=min(actors, len(chunks))),
        fn_constructor_kwargs={"model": str(model), "model_sha256": model_sha256, "done": done, "out": str(out),
                               "save_maps": save_maps, "threads": max(1, int(cpus_per_actor)),
                               "max_pixels": max_pixels, "sign_key": sign_key, "device": device,
                               "precision": default().precision})
    counts = {"scored": 0, "skipped": 0, "error": 0}
    t0 = time.perf_counter()
    try:
        with tqdm(total=len(paths), desc="predict (ray)", unit="img", disable=not progress, dynamic_ncols=True) as bar:
            for block in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
                rows = block.to_pylist()
                for r in rows:
                    counts[r["status"]] += 1
                store.add(r for r in rows if r["status"] != "skipped")
                bar.update(len(rows))
    except ray.exceptions.RayError as exc:
        store.flush()
        first = str(exc).strip().splitlines()
        raise CostfilterError(f"the Ray job failed; results so far are kept in {out} "
                              f"({first[-1] if first else type(exc).__name__})") from None
    except BaseException:
        store.flush()  # a Ctrl-C or a lost driver keeps what was received
        raise
    seconds = time.perf_counter() - t0
    table = store.finish()
    decisions = dict(Counter(table["decision"].to_pylist()))
    return RayRun(counts["scored"], counts["skipped"], counts["error"], seconds, table, decisions)


def results_digest(table: pa.Table) -> dict[str, Any]:
    """The run record's ``inputs``: how many images, and one SHA-256 over each row's path and
    content hash (the actors hashed the files; the driver never reads them)."""
    h = hashlib.sha256()
    pairs = sorted(zip(table["image"].to_pylist(), table["sha256"].to_pylist()), key=lambda x: x[0])
    for image, sha in pairs:
        h.update(f"{image}\t{sha}\n".encode())
    return {"count": len(pairs), "sha256": h.hexdigest(), "hashed": "image path and content SHA-256 per row"}

