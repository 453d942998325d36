"""``costfilter predict MODEL SOURCE… --engine ray``: score an archive with a pool of Ray actors,
on a cluster whose nodes share no disk.

* **The model** goes to the actors as bytes through Ray's object store; each actor checks its
  SHA-256 on arrival and opens it (checkpoint or ``.onnx``) once, from a private temporary file.
* **Images** are read where they are: local paths by reader tasks pinned to the driver's node
  (its disk), URIs (``s3://…``) by readers on any node. Each reader hashes the files, skips those
  already scored, and passes the bytes on (on a cluster of one node, the driver's own machine,
  each actor reads its batches itself: no copy of every image in the object store; the speed
  was the same either way, 42.0 images/s with one actor on this machine); the actors decode, score and return one row per image
  (:data:`~costfilter.distributed.store.SCHEMA`), with the overlay and mask PNGs as bytes when
  ``save_maps``.
* **The driver** writes everything: rows into a :class:`~costfilter.distributed.store.ResultStore`
  and the pictures into ``out``, each atomically, so a killed job resumes.
* **A node lost** mid-job: Ray restarts its actors elsewhere and retries the batches they held
  (Ray Data's actor pool: ``max_restarts`` and ``max_task_retries`` unbounded); a batch's rows are
  delivered once, when it completes.

Scores equal the local ``predict`` path's: the same decode, resize, model and region code run,
on batches cut as the local path cuts them.
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


#: reader tasks at once: a file is read and hashed far faster than it is scored
READERS = 2
#: the rows actors return, with the pictures as bytes (the driver writes them)
WIRE_SCHEMA = ROW_SCHEMA.append(pa.field("overlay_png", pa.binary())).append(pa.field("mask_png", pa.binary()))


def _error_row(path: str, sha: str | None, message: str, model_sha: str | None) -> dict[str, Any]:
    return {"image": path, "sha256": sha, "decision": "error", "error": message, "model_sha256": model_sha,
            "status": "error"}


def read_chunk(batch: dict[str, np.ndarray], done: dict[str, str]) -> dict[str, np.ndarray]:
    """A reader task: ``batch["images"]`` (one chunk of paths per item) → the same with
    ``data`` (each file's bytes; empty when already scored or unreadable), ``sha256`` and
    ``error`` (why a file could not be read), so the actors need no access to the files."""
    out: dict[str, list[Any]] = {"images": [], "data": [], "sha256": [], "error": []}
    for chunk in batch["images"]:
        paths = [str(p) for p in chunk]
        data, shas, errors = [], [], []
        for path in paths:
            try:
                content = read_bytes(path)
            except Exception as exc:  # noqa: BLE001 - local OSError or a remote filesystem's own error
                data.append(b"")
                shas.append("")
                errors.append(f"{path}: cannot read ({type(exc).__name__}: {exc})")
                continue
            sha = hashlib.sha256(content).hexdigest()
            skip = done.get(path_key(path)) == sha
            data.append(b"" if skip else content)
            shas.append(sha)
            errors.append("skip" if skip else "")
        for key, value in zip(out, (paths, data, shas, errors)):
            out[key].append(value)
    return {k: _objects(v) for k, v in out.items()}


def _objects(values: list[Any]) -> np.ndarray:
    """A 1-D object array holding each value whole (``np.array`` would stack equal-length lists)."""
    arr = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        arr[i] = v
    return arr


def model_from_store(model: list[Any], name: str, sha256: str) -> Path:
    """The model sent through Ray's object store (``model``: ``[ObjectRef]``, so Ray hands the
    reference over unresolved) written to a private temporary file on this node, its SHA-256
    checked against ``sha256``."""
    import tempfile

    import ray

    data = ray.get(model[0])
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise CostfilterError(f"{name}: the model arrived with SHA-256 {got[:12]}…, not {sha256[:12]}…; refused")
    folder = Path(tempfile.mkdtemp(prefix="costfilter-model-"))
    path = folder / name
    path.write_bytes(data)
    return path


class ImageScorer:
    """One Ray actor: the model, opened once, scoring batches of images sent as bytes.

    ``model``: ``[ObjectRef]`` of the model file's bytes, ``name`` its file name and
    ``model_sha256`` its SHA-256 (checked on arrival, stored in every row); ``save_maps``: return
    each image's overlay and mask PNGs; ``threads``: torch / onnxruntime threads (the CPUs Ray
    gave the actor); ``device`` / ``precision``: where a checkpoint runs (``cuda``: the GPU Ray
    assigned the actor, the only one it sees).
    """

    def __init__(self, model: list[Any], *, name: str, model_sha256: str, save_maps: bool, threads: int,
                 max_pixels: int, sign_key: str | None = None, device: str = "cpu", precision: str = "fp32",
                 done: dict[str, str] | None = None):
        import torch

        from ..loading import is_onnx

        torch.set_num_threads(max(1, threads))
        set_max_pixels(max_pixels)
        path = model_from_store(model, name, model_sha256)
        if is_onnx(path):
            from ..export import OnnxDetector

            self.det: Any = OnnxDetector(path, threads=threads, sign_key=sign_key)
        else:
            from ..api import Detector

            self.det = Detector.load(path, progress=False, sign_key=sign_key, device=device, precision=precision)
        self.save_maps = save_maps
        self.model_sha = model_sha256
        self.done = done or {}  # for batches that come as paths (:func:`read_chunk` run here)
        cfg = self.det.config
        # Tiled models cut tiles from the full-size source; others read huge images box-reduced.
        self.decode_size = None if cfg.tiling.size else cfg.features.image_size
        self.pixel = self.det.thresholds.pixel if self.det.thresholds else 0.0
        self.min_area = cfg.calibration.min_region_area

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """One item per chunk (:func:`read_chunk`'s columns), each scored as one model batch →
        one row per image (:data:`WIRE_SCHEMA`). Batches of paths alone are read here first."""
        if "data" not in batch:
            batch = read_chunk(batch, self.done)
        return pa.concat_tables([self.score([str(p) for p in paths], list(data), list(shas), list(errors))
                                 for paths, data, shas, errors in zip(batch["images"], batch["data"],
                                                                      batch["sha256"], batch["error"])])

    def score(self, paths: list[str], data: list[bytes], shas: list[str], errors: list[str]) -> pa.Table:
        """Rows (:data:`WIRE_SCHEMA`) for ``paths`` and their bytes, run through the model as one batch."""
        rows: list[dict[str, Any]] = []
        todo: list[tuple[str, str, np.ndarray, tuple[int, int]]] = []
        for path, content, sha, error in zip(paths, data, shas, errors):
            if error == "skip":
                rows.append({"image": path, "sha256": sha, "status": "skipped"})
                continue
            if error:
                rows.append(_error_row(path, None, error, self.model_sha))
                continue
            try:
                image, source = decode(Path(path), content, size=self.decode_size)
            except CostfilterError as exc:
                rows.append(_error_row(path, sha, str(exc), self.model_sha))
                continue
            todo.append((path, sha, image, source))
        for (path, sha, image, source), pred in zip(todo, self._predict([t[2] for t in todo])):
            if isinstance(pred, str):
                rows.append(_error_row(path, sha, f"{path}: {pred}", self.model_sha))
            else:
                rows.append(self._row(dataclasses.replace(pred, path=path, size=tuple(source)), image, sha))
        return pa.Table.from_pylist(rows, schema=WIRE_SCHEMA)

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
        from ..viz import encode_png

        pictures: dict[str, bytes | None] = {"overlay_png": None, "mask_png": None}
        if self.save_maps:
            stem = picture_stem(pred.path)
            regions, picture, mask, _ = render(pred, image, self.pixel, self.min_area)
            overlay_name, mask_name = f"{stem}_overlay.png", f"{stem}_mask.png"
            pictures = {"overlay_png": encode_png(picture), "mask_png": encode_png(mask)}
        else:
            regions = pred.regions(self.pixel, self.min_area, at=render_size(pred.size))
            overlay_name = mask_name = None
        row = result_record(pred, regions, overlay_name, mask_name) | pictures
        row.update(regions=json.dumps(row["regions"]), sha256=sha, model_sha256=self.model_sha, error=None,
                   status="scored", score=float(pred.score), typical_score=float(pred.typical_score))
        return row


@dataclasses.dataclass
class RayRun:
    """What a Ray scoring job did: rows ``scored`` now, ``skipped`` (already in the results),
    ``errors``; the final table; seconds from the first row requested to the last received, of
    those until the first rows arrived (actors starting, the model loading), and the driver's
    own: its loop over the rows (writing pictures and results) and its process's CPU seconds
    from the first rows on (Ray's threads in it included; before them it only waits)."""

    scored: int
    skipped: int
    errors: int
    seconds: float
    table: pa.Table
    decisions: dict[str, int]
    driver_s: float = 0.0
    first_rows_s: float = 0.0
    driver_cpu_s: float = 0.0
    #: (seconds since the start, rows received so far) at each block's arrival
    arrivals: list[tuple[float, int]] = dataclasses.field(default_factory=list)


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
    model_ref = ray.put(Path(model).read_bytes())  # to every node through the object store
    # Each item is one model batch, cut as the local path cuts them: the backbone's kernels
    # round differently at other batch sizes (≈1e-6 relative), so the same cut gives the same scores.
    chunks = [list(paths[i : i + batch_size]) for i in range(0, len(paths), batch_size)]
    ds = ray.data.from_items([{"images": c} for c in chunks])
    one_node = sum(bool(n.get("Alive")) for n in ray.nodes()) == 1
    if one_node:  # every actor sees the driver's disk: each reads its own batches (no copies in the object store)
        read = ds
    else:
        # Readers reserve no CPU (the actors hold every CPU of the pool; reading waits on the disk),
        # so their number is bounded here: unbounded, Ray started one process per waiting chunk, and
        # on a node of half a core those processes starved its actor (28 readers, measured).
        read = ds.map_batches(read_chunk, batch_size=1, batch_format="numpy", fn_kwargs={"done": done}, num_cpus=0,
                              concurrency=min(READERS, len(chunks)), **_where_files_are(paths))
    scored = read.map_batches(
        ImageScorer, batch_size=1, batch_format="numpy", num_cpus=cpus_per_actor, num_gpus=gpus_per_actor,
        compute=ray.data.ActorPoolStrategy(size=min(actors, len(chunks))),
        fn_constructor_kwargs={"model": [model_ref], "name": Path(model).name, "model_sha256": model_sha256,
                               "save_maps": save_maps, "threads": max(1, int(cpus_per_actor)),
                               "max_pixels": max_pixels, "sign_key": sign_key, "device": device,
                               "precision": default().precision, "done": done if one_node else {}})
    counts = {"scored": 0, "skipped": 0, "error": 0}
    t0, cpu0 = time.perf_counter(), time.process_time()
    driver_s, first_rows_s = 0.0, 0.0
    arrivals: list[tuple[float, int]] = []
    try:
        with tqdm(total=len(paths), desc="predict (ray)", unit="img", disable=not progress, dynamic_ncols=True) as bar:
            for block in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
                t = time.perf_counter()
                if not first_rows_s:
                    first_rows_s, cpu0 = t - t0, time.process_time()
                rows = block.to_pylist()
                for r in rows:
                    counts[r["status"]] += 1
                    _write_pictures(out, r)
                store.add(r for r in rows if r["status"] != "skipped")
                bar.update(len(rows))
                arrivals.append((t - t0, sum(counts.values())))
                driver_s += time.perf_counter() - t
    except ray.exceptions.RayError as exc:
        store.flush()
        first = str(exc).strip().splitlines()
        raise CostfilterError(f"the Ray job failed; results so far are kept in {out} "
                              f"({first[-1] if first else type(exc).__name__})") from None
    except BaseException:
        store.flush()  # a Ctrl-C or a lost driver keeps what was received
        raise
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    table = store.finish()
    decisions = dict(Counter(table["decision"].to_pylist()))
    return RayRun(counts["scored"], counts["skipped"], counts["error"], seconds, table, decisions, driver_s,
                  first_rows_s, cpu, arrivals)


def _where_files_are(paths: Sequence[str]) -> dict[str, Any]:
    """Reader tasks for local paths run on the driver's node, whose disk holds them (the other
    nodes may share none): Ray labels every node with its id. URIs are read wherever Ray likes."""
    import ray

    from ..sources import is_uri

    if all(is_uri(p) for p in paths):
        return {}
    return {"label_selector": {"ray.io/node-id": ray.get_runtime_context().get_node_id()}}


def _write_pictures(out: Path, row: dict[str, Any]) -> None:
    """The overlay and mask an actor drew for ``row``, written atomically into ``out`` by the
    driver (the actors' nodes need not see it); their bytes leave the row."""
    from ..atomic import write_bytes

    for name_key, data_key in (("overlay", "overlay_png"), ("mask", "mask_png")):
        data = row.pop(data_key, None)
        if data is not None and row.get(name_key):
            write_bytes(out / row[name_key], data)


def results_digest(table: pa.Table) -> dict[str, Any]:
    """The run record's ``inputs``: how many images, and one SHA-256 over each row's path and
    content hash (the actors hashed the files; the driver never reads them)."""
    h = hashlib.sha256()
    pairs = sorted(zip(table["image"].to_pylist(), table["sha256"].to_pylist()), key=lambda x: x[0])
    for image, sha in pairs:
        h.update(f"{image}\t{sha}\n".encode())
    return {"count": len(pairs), "sha256": h.hexdigest(), "hashed": "image path and content SHA-256 per row"}

