"""One inspection, wherever the image came from (an upload, a hot folder, a stream): decode,
score, decide, draw, and store the record with its files, in one place. A batch of images is
scored together; each image's outcome is its own (a bad image does not stop the others).

A station adds, to the same transaction that stores the record, one message per sink (the
outbox) and the key of the input it came from, so what was acknowledged cannot be lost and what
was stored is not inspected again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from .. import __version__, model_thread
from ..data.imageio import decode
from ..decisions import Thresholds
from ..errors import CostfilterError
from ..result_files import analyse, region_dicts
from ..results import Prediction
from ..state import DetectorState
from ..viz import encode_png
from .metrics import Metrics
from .pictures import map_grey, overlay_picture
from .store import HistoryStore, Started, utc_now

log = logging.getLogger("costfilter.serve")

MEDIA = {"PNG": ("png", "image/png"), "JPEG": ("jpg", "image/jpeg"), "BMP": ("bmp", "image/bmp"),
         "TIFF": ("tif", "image/tiff"), "WEBP": ("webp", "image/webp")}


class Scorer(Protocol):
    """What the service needs of a model: ``Detector`` and ``OnnxDetector`` both fit."""

    thresholds: Thresholds | None
    state: DetectorState
    config: Any

    def predict(self, images: Any) -> list[Prediction]: ...

    def thresholds_for(self, category: str | None) -> Thresholds: ...


def open_scorer(path: Path, *, sign_key: str | None = None, runtime: str | None = None) -> Scorer:
    """A model file opened for the service (:func:`~costfilter.loading.open_model`), loaded on
    the model thread that will score with it (``model_thread.py`` says why)."""
    from ..loading import open_model

    scorer: Scorer = model_thread.run(open_model, path, progress=False, sign_key=sign_key, runtime=runtime)
    return scorer


@dataclasses.dataclass
class Item:
    """One image to inspect: its name (file name, or the stream and frame), its encoded bytes,
    the key of the input it came from (a station's), and where it came from (a source name)."""

    name: str
    data: bytes
    input_key: str | None = None
    source: str = "upload"
    #: who asked for it (an API key's name); a station's own inputs are the station's
    user: str | None = None


@dataclasses.dataclass(frozen=True)
class Served:
    """The model in service, as one value, so a swap is atomic: what an image was scored with
    is what it is decided, drawn and recorded with (a station keeps a batch scored while the
    next is scored). ``label``: its version as the history records it."""

    detector: Scorer
    thresholds: Thresholds
    sha: str
    label: str


@dataclasses.dataclass
class Scored:
    """An item decoded and scored, not stored yet: the decoded ``(H, W, 3)`` image, its source
    ``(H, W)``, when its batch started (for latency), and its record, begun in the store with
    the item's file (:meth:`HistoryStore.begin`)."""

    item: Item
    image: np.ndarray
    source: tuple[int, int]
    prediction: Prediction
    started: float
    served: Served
    record: Started


@dataclasses.dataclass
class Inspected:
    """One stored inspection: the committed record, its mask PNG, and what its overlay is drawn
    from when the upload's answer inlines it: the decoded image, the ``(h, w)`` 8-bit map and
    0/255 mask."""

    row: dict[str, Any]
    category: str | None
    mask_png: bytes
    image: np.ndarray
    grey: np.ndarray
    mask: np.ndarray

    def overlay_png(self) -> bytes:
        """The overlay, as ``GET /results/{id}/overlay`` will draw it."""
        return encode_png(overlay_picture(self.image, self.grey, self.mask, self.row))


def _extension(data: bytes) -> str:
    """The file extension an upload is kept under, from its header (``img`` when unknown)."""
    try:
        fmt = Image.open(io.BytesIO(data)).format or ""
    except Exception:  # noqa: BLE001 - not an image: decode says why, and nothing is kept
        fmt = ""
    return MEDIA.get(fmt, ("img", ""))[0]


class Inspector:
    """Scores images with ``detector`` and keeps every record in ``store``; ``sinks`` are the
    names of the station's sinks, each of which gets one message per record."""

    def __init__(self, detector: Scorer, store: HistoryStore, *, model_name: str = "model",
                 station: str | None = None, sinks: Sequence[str] = (), metrics: Metrics | None = None):
        self.model_name = model_name
        self.store = store
        self.station, self.sinks = station, list(sinks)
        self.metrics = metrics or Metrics()
        self.served = self.serving(detector)
        self.min_area = detector.config.calibration.min_region_area
        # Huge images are box-reduced while decoded, as files are (tiles need the source pixels).
        self.decode_size = None if detector.config.tiling.size else detector.config.features.image_size
        self.lock = threading.Lock()  # one inference at a time: the model already uses every core
        # Decoding and drawing are bounded too: at most two callers hold decoded images at once.
        self.working = threading.BoundedSemaphore(2)
        self.on_commit: list[Any] = []  # called after each commit that queued messages (wakes the senders)
        #: called with each stored record, in order (the drift monitor)
        self.on_record: list[Callable[[dict[str, Any]], None]] = []
        #: called with ``(stage, seconds)`` for each image's stages (beside the /metrics histogram)
        self.on_stage: list[Callable[[str, float], None]] = []
        #: applied to every model version before it is served (a station's operating point)
        self.prepare: Callable[[Scorer], None] = lambda det: None

    def serving(self, detector: Scorer, label: str | None = None) -> Served:
        """``detector`` as a value to serve (checked: fitted, not zero-shot)."""
        thresholds = detector.thresholds
        if thresholds is None or getattr(detector, "zero_shot", False):
            raise CostfilterError("the service needs a fitted model (a checkpoint or an exported .onnx file)")
        sha = str(detector.state.sha256 or "")
        label = label or f"{self.model_name} {detector.config.method} {sha[:12]} (costfilter {__version__})"
        return Served(detector, thresholds, sha, label)

    def swap(self, detector: Scorer, label: str | None = None) -> Served:
        """Serve ``detector`` from the next batch on. A batch being scored finishes with the
        model it started with (the swap waits for the model lock), so no request is dropped."""
        served = self.serving(detector, label)
        with self.lock:
            self.served = served
        return served

    @property
    def detector(self) -> Scorer:
        return self.served.detector

    @property
    def thresholds(self) -> Thresholds:
        return self.served.thresholds

    @property
    def sha(self) -> str:
        return self.served.sha

    def inspect(self, items: Sequence[Item]) -> list[Inspected | CostfilterError]:
        """Inspect ``items`` as one batch; per item its stored record, or the error that kept it
        from being stored (:class:`CostfilterError` for a bad image; ``StoreUnavailable`` when the
        history cannot keep it: then nothing of it was kept)."""
        with self.working:  # one permit from decoding to stored: decoded images stay bounded
            # All of it on the model thread, not only the model: handing an upload from thread to
            # thread cost a batch-1 request 0.5-1.4 ms, and four clients' decoding and storing
            # beside the model slowed it more than it overlapped (2 cores: 35 → 42 requests/s).
            return model_thread.run(self._whole, items)

    async def inspect_async(self, items: Sequence[Item]) -> list[Inspected | CostfilterError]:
        """:meth:`inspect` for an event loop: the upload is queued for the model thread and
        awaited, with no worker thread blocked on it. Decoded images stay bounded: the one
        model thread decodes each upload only when it starts on it."""
        return await asyncio.wrap_future(model_thread.submit(self._whole, items))

    def _whole(self, items: Sequence[Item]) -> list[Inspected | CostfilterError]:
        return self._keep(self._score(items))

    def score(self, items: Sequence[Item]) -> list[Scored | CostfilterError]:
        """Decode and score ``items`` as one batch (the first half of :meth:`inspect`). A station
        scores the next batch while the previous one is being kept."""
        with self.working:
            return self._score(items)

    def keep(self, scored: Sequence[Scored | CostfilterError]) -> list[Inspected | CostfilterError]:
        """Draw and store each scored item, in order (the second half of :meth:`inspect`)."""
        with self.working:
            return self._keep(scored)

    def drop(self, scored: Sequence[Scored | CostfilterError]) -> None:
        """Give up items scored by :meth:`score` that will not be kept: their records, begun
        in the store, are removed."""
        for x in scored:
            if isinstance(x, Scored):
                self.store.discard(x.record)

    def _timed(self, stage: str, seconds: float) -> None:
        self.metrics.stage.labels(stage).observe(seconds)
        for hook in self.on_stage:
            hook(stage, seconds)

    def _score(self, items: Sequence[Item]) -> list[Scored | CostfilterError]:
        out: list[Scored | CostfilterError | None] = [None] * len(items)
        t0 = time.perf_counter()
        decoded: list[tuple[int, np.ndarray, tuple[int, int], Started]] = []
        begun: list[Started] = []
        try:
            for i, item in enumerate(items):
                t = time.perf_counter()
                # The item's file is written and synced meanwhile, on the store's thread: on a
                # request's path it cost ~1.5 ms after scoring (mostly waiting for the disk).
                record = self.store.begin(uuid.uuid4().hex, {"image": (f"image.{_extension(item.data)}", item.data)})
                begun.append(record)
                try:
                    image, source = decode(Path(item.name), item.data, size=self.decode_size)
                except CostfilterError as exc:
                    self.store.discard(record)
                    out[i] = exc
                    self.metrics.input_errors.labels(item.source).inc()
                    continue
                self._timed("decode", time.perf_counter() - t)
                decoded.append((i, image, tuple(source), record))
            if decoded:
                with self.lock:
                    served = self.served
                    t = time.perf_counter()
                    # On the one thread that loads and scores (model_thread.py: 2× faster at batch 1).
                    preds = model_thread.run(served.detector.predict, [image for _, image, _, _ in decoded])
                    model_s = time.perf_counter() - t
        except BaseException:
            for record in begun:  # none of them will be kept (discarding twice is harmless)
                self.store.discard(record)
            raise
        if decoded:
            for _ in decoded:  # a batch's model time, shared by its images
                self._timed("model", model_s / len(decoded))
            for (i, image, source, record), pred in zip(decoded, preds):
                out[i] = Scored(items[i], image, source, pred, t0, served, record)
        return out  # type: ignore[return-value]

    def _keep(self, scored: Sequence[Scored | CostfilterError]) -> list[Inspected | CostfilterError]:
        out: list[Inspected | CostfilterError] = []
        try:
            for x in scored:
                out.append(self._store(x) if isinstance(x, Scored) else x)
        except BaseException:
            self.drop(scored[len(out) + 1:])  # the one that raised cleaned up after itself
            raise
        for o in out:
            if isinstance(o, Inspected):
                for hook in self.on_record:
                    try:
                        hook(o.row)
                    except Exception as exc:  # noqa: BLE001 - the record is stored; its answer must not fail
                        log.warning("after storing %s: %s", o.row["id"], str(exc).splitlines()[0] if str(exc) else exc)
        if self.sinks and any(isinstance(o, Inspected) for o in out):
            for wake in self.on_commit:
                wake()
        return out

    def _store(self, scored: Scored) -> Inspected | CostfilterError:
        item, image, source, t0 = scored.item, scored.image, scored.source, scored.started
        served = scored.served
        try:
            t = time.perf_counter()
            pred = dataclasses.replace(scored.prediction, size=source)  # regions in source pixels
            # A model of several learned categories decides with the routed category's thresholds.
            used = served.thresholds if pred.category is None else served.detector.thresholds_for(pred.category)
            drawn = analyse(pred, used.pixel, self.min_area)
            # The map is kept at the model's resolution where that is smaller than the pictures':
            # upsampled it holds nothing more, and encoding it is a request's largest PNG.
            own = pred.anomaly_map
            smaller = own.shape[0] <= drawn.hw[0] and own.shape[1] <= drawn.hw[1]
            grey, scale = map_grey(own if smaller else drawn.amap, drawn.pixel)
            t = self._stage_done("draw", t)
            mask_png, map_png = encode_png(drawn.mask), encode_png(grey)
            t = self._stage_done("encode", t)
            row = {
                "id": scored.record.record_id, "created": utc_now(), "filename": item.name[-255:],
                "image_sha256": hashlib.sha256(item.data).hexdigest(), "width": source[1], "height": source[0],
                "score": pred.score, "decision": pred.decision, "typical_score": pred.typical_score,
                "image_threshold": used.image, "pixel_threshold": used.pixel, "map_scale": scale,
                "model_sha256": served.sha, "model_version": served.label, "regions": region_dicts(drawn.regions),
                "station": self.station, "source": item.source,
            }
            message = self.message(row, item.source)
        except BaseException:
            self.store.discard(scored.record)  # not kept: nothing else will remove its folder
            raise
        try:
            # The overlay and thumbnail are drawn from these when first asked for (pictures.py).
            stored = self.store.add(row, {"mask": ("mask.png", mask_png), "map": ("map.png", map_png)},
                                    started=scored.record, messages={sink: message for sink in self.sinks},
                                    input_key=item.input_key,
                                    user=item.user or (f"station {self.station}" if self.station else "service"))
        except CostfilterError as exc:  # StoreUnavailable / StoreFull: nothing of it was kept
            return exc
        self._stage_done("store", t)
        self.metrics.images.labels(item.source).inc()
        self.metrics.decisions.labels(pred.decision).inc()
        self.metrics.latency.observe(time.perf_counter() - t0)
        return Inspected(stored, pred.category, mask_png, image, grey, drawn.mask)

    def _stage_done(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self._timed(stage, now - since)
        return now

    def notify(self, ref: str, payload: dict[str, Any], *,
               entry: tuple[str, str, str | None, dict[str, Any]] | None = None) -> None:
        """Queue ``payload``, a message that is not an inspection (an input's error, an alarm,
        an anchor), for every sink in order with the inspections, with ``entry`` in the audit
        trail (:meth:`HistoryStore.notify`), and wake the senders. Raises what the store raises."""
        self.store.notify(ref, payload, self.sinks, entry=entry)
        for wake in self.on_commit:
            wake()

    def report_error(self, name: str, reason: str, source: str, *, moved_to: str | None = None) -> bool:
        """Tell every sink that input ``name`` got no inspection and why (``kind: error``), in
        order with the inspections, so the line's PLC hears of that part too. False when the
        message could not be stored (the store is down: it is logged, and the file waits in
        ``failed/`` with its reason)."""
        if not self.sinks:
            return True
        key = f"error-{uuid.uuid4().hex[:26]}"
        payload = {"kind": "error", "key": key, "station": self.station, "source": source, "image": name,
                   "reason": reason, "moved_to": moved_to, "timestamp": utc_now().isoformat(timespec="milliseconds")}
        try:
            self.notify(key, payload)
        except Exception as exc:  # noqa: BLE001 - the store is down: say so, the reason file stays
            log.error("the error message for %s could not be stored (%s)", name, str(exc).splitlines()[0])
            return False
        return True

    def message(self, row: dict[str, Any], source: str) -> dict[str, Any]:
        """What a sink receives for one record; ``key`` (the record id) makes delivery idempotent."""
        return {"kind": "inspection", "key": row["id"], "station": self.station, "source": source,
                "image": row["filename"],
                "image_sha256": row["image_sha256"], "decision": row["decision"], "score": row["score"],
                "image_threshold": row["image_threshold"], "regions": row["regions"],
                "model_sha256": row["model_sha256"], "timestamp": row["created"].isoformat(timespec="milliseconds")}
