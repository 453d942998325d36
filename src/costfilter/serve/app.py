"""The inspection service: a FastAPI app over a fitted detector (checkpoint or ONNX export)
and a :class:`~costfilter.serve.store.HistoryStore`. Routes: ``POST /predict``, ``GET /health``,
``GET /metrics`` (Prometheus), ``GET /results`` (history), ``GET /results/{id}`` and its files,
``GET /`` (the web page); the OpenAPI spec is at ``/openapi.json``. With a station
(:mod:`costfilter.station`) its sources and sinks run for the app's lifetime, and ``/health``
and the page show them."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..drift import DriftConfig
from ..errors import CostfilterError
from . import audit
from .inspection import MEDIA, Inspected, Inspector, Item, Scorer, open_scorer
from .loop import OperatorLoop
from .pictures import DRAWN_LATER, drawn_file
from .routes_loop import add_loop_routes
from .security import LOCAL_HOSTS, Guard, key_entry
from .store import HistoryStore, StoreFull, StoreUnavailable
from .wire import Health, PredictionOut, ResultsPage, _out, _short, _user

log = logging.getLogger("costfilter.serve")

DEFAULT_MAX_UPLOAD_MB = 20.0
#: upload content types accepted: what browsers send for image files Pillow decodes, and the
#: generic binary type many HTTP clients send by default (decoding then decides)
IMAGE_TYPES = {"image/png", "image/jpeg", "image/bmp", "image/x-ms-bmp", "image/tiff", "image/webp",
               "application/octet-stream"}


def _public(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """A station's state for anyone who can reach /health: no names (a default name is made from
    a host, path or URL), no targets, each state cut to its first word (reasons can name them
    too); sources and sinks by kind and place in the station file."""
    if state is None:
        return None

    def cut(x: dict[str, Any], i: int, what: str) -> dict[str, Any]:
        out = {k: (v.split(" ", 1)[0].rstrip(":") if k == "state" else v) for k, v in x.items()
               if k not in ("target", "name", "problem")}
        return dict(out, name=f"{what} {i + 1}")
    return dict(state, sources=[cut(x, i, "source") for i, x in enumerate(state["sources"])],
                sinks=[cut(x, i, "sink") for i, x in enumerate(state["sinks"])], name="station",
                watchdog=len(state.get("watchdog", {})))


#: what /health says of the model to a caller without a key, when keys are set: nothing that
#: names a file or tells its thresholds
PUBLIC_MODEL_FACTS = ("method", "version", "costfilter", "api_key_required")


def create_app(detector: Scorer, store: HistoryStore, *, model_name: str = "model",
               max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, api_key: str | None = None,
               operator_key: str | None = None, keys: dict[str, tuple[str, str]] | None = None,
               allowed_hosts: Sequence[str] = LOCAL_HOSTS, cors_origins: Sequence[str] = (),
               station: Any | None = None, model_path: Path | None = None, sign_key: str | None = None,
               drift: DriftConfig | None = None) -> FastAPI:
    """The app. ``detector`` must be fitted; ``store`` keeps every prediction. ``api_key`` (an
    admin's, named ``admin``), ``operator_key`` (named ``operator``), ``keys`` (a key file's:
    SHA-256 → name, role), ``allowed_hosts`` and ``cors_origins`` configure
    :class:`~costfilter.serve.security.Guard`. ``station`` (a :class:`~costfilter.station.Station`
    over the same detector and store) is started with the app and stopped with it; uploads then
    go through its inspector. ``model_path``: the file ``detector`` came from, the root of the
    model versions (:class:`~costfilter.serve.loop.OperatorLoop`); a version applied from it stays
    in service across restarts."""
    if not max_upload_mb > 0:
        raise CostfilterError(f"the upload limit must be positive, got {max_upload_mb:g} MB")
    inspector: Inspector = station.inspector if station is not None else Inspector(detector, store,
                                                                                    model_name=model_name)
    loop: OperatorLoop = (station.loop if station is not None
                          else OperatorLoop(inspector, model_path=model_path, sign_key=sign_key, drift=drift))
    all_keys = dict(keys or {})
    for key, name, role in ((api_key, "admin", "admin"), (operator_key, "operator", "operator")):
        if key:
            sha, who = key_entry(key, name, role)
            if sha in all_keys:  # one key, two roles: whichever came last would silently win
                raise CostfilterError(f"the {role} key (--{'api' if role == 'admin' else 'operator'}-key) is the same "
                                      f"key as {all_keys[sha][0]!r} ({all_keys[sha][1]}); give each role its own key")
            all_keys[sha] = who
    try:  # who may do what, from now on, in the audit trail (only when it changed)
        store.transact(lambda conn: audit.record_keys(conn, all_keys))
    except Exception as exc:  # noqa: BLE001 - a database that cannot be written is reported by /health
        log.warning("the API keys' roles could not be recorded in the audit trail: %s", str(exc).splitlines()[0])
    max_bytes = int(max_upload_mb * 1e6)

    def model_facts() -> dict[str, Any]:
        served = inspector.served
        t, det = served.thresholds, served.detector
        try:
            version = loop.versions.by_sha(served.sha)
        except Exception:  # noqa: BLE001 - the database is down: /health reports that, it must still answer
            version = None
        return {"name": model_name, "method": det.config.method, "sha256": served.sha, "costfilter": __version__,
                "version": version["n"] if version else None,
                "image_size": det.config.features.image_size, "categories": det.state.categories,
                "thresholds": {"image": t.image, "pixel": t.pixel, "review": t.review, "ood_limit": t.ood_limit},
                "api_key_required": bool(all_keys)}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        (station or loop).start()  # a station starts its loop with its sources
        try:
            yield
        finally:
            (station or loop).stop()

    app = FastAPI(title="costfilter inspection service", version=__version__, lifespan=lifespan,
                  description="Upload an image of a part; get an anomaly score, a pass/review/reject decision, "
                              "a heat-map overlay and a defect mask. Every prediction is kept in the history.")
    app.state.loop = loop
    app.add_middleware(Guard, allowed_hosts=allowed_hosts, keys=all_keys, cors_origins=cors_origins,
                       max_body=max_bytes + 64_000)  # multipart framing around the file
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization"])

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path != "/predict":
            return await request_validation_exception_handler(request, exc)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return JSONResponse(status_code=422, content={"detail": (
            f"{where}: {first.get('msg', 'invalid')}; send the image as one multipart/form-data part named 'file', "
            "with a file name (curl -F file=@part.png)")})

    @app.head("/health", include_in_schema=False)  # a load balancer's check
    @app.get("/health", response_model=Health)
    def health() -> Health:
        """Model identity and thresholds, the store's state and the number of stored predictions;
        with a station, its sources and sinks and the outbox backlog. ``degraded`` (with the
        reason) when a prediction could not be stored now, or a source or sink is down."""
        problem = store.problem()
        try:
            total = store.list(limit=0)[0]
        except Exception:  # noqa: BLE001 - the database itself is the problem; already reported
            total = -1
        state = station.health() if station is not None else None
        status = "degraded" if problem or (state and not state["ok"]) else "ok"
        facts = model_facts()
        if all_keys:  # answered without a key (load balancers): nothing that names a host, path or URL
            facts = {k: facts[k] for k in PUBLIC_MODEL_FACTS}
            problem = problem and "predictions cannot be stored now (the reason is at /station and in the log)"
        return Health(status=status, model=facts, database="ok" if problem is None else "unavailable",
                      predictions=total, problem=problem, station=_public(state) if all_keys else state)

    @app.get("/model")
    def model_route() -> dict[str, Any]:
        """The model in service in full: file name, method, SHA-256, version, input size,
        categories and thresholds (``/health`` shows less to a caller without the key)."""
        return model_facts()

    @app.get("/station", responses={404: {"description": "this service runs no station"}})
    def station_state() -> dict[str, Any]:
        """The station's sources and sinks in full: targets, states with their reasons, counts and
        the backlog per sink (``/health`` shows them without targets and reasons when an API key is set)."""
        if station is None:
            raise HTTPException(404, "this service runs no station (serve --station FILE)")
        return station.health()

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    def metrics() -> Response:
        """Images, decisions by kind, input errors, inspection latency histogram, messages delivered
        and failed per sink, outbox backlog (Prometheus text format)."""
        return Response(inspector.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/predict", response_model=PredictionOut,
              responses={400: {"description": "not a decodable image, or not one file"},
                         413: {"description": "upload too large"},
                         415: {"description": "not an image content type"},
                         503: {"description": "the history cannot store the prediction; nothing was kept"},
                         507: {"description": "no space left to store the prediction; nothing was kept"}})
    async def predict(request: Request,
                      file: list[UploadFile] = File(..., description="one image file (PNG, JPEG, BMP, TIFF, WebP)"),
                      inline: bool = Query(False, description="also return overlay and mask PNGs as base64")
                      ) -> PredictionOut:
        """Score one uploaded image, store it with its results, return score, decision, regions and links.
        Nothing is acknowledged that was not stored: a store that cannot keep it answers 503 (507: disk full)."""
        if len(file) != 1:
            raise HTTPException(400, f"send one image per request; got {len(file)} 'file' parts")
        upload = file[0]
        name = (upload.filename or "upload")[-255:]
        if upload.content_type not in IMAGE_TYPES:
            raise HTTPException(415, f"{_short(name)}: content type {_short(str(upload.content_type))!r} is not an image type "
                                     f"(accepted: {', '.join(sorted(IMAGE_TYPES))})")
        data = await upload.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise HTTPException(413, f"{name}: upload too large (> {max_upload_mb:g} MB)")
        if not data:
            raise HTTPException(400, f"{name}: empty upload")
        done = (await inspector.inspect_async([Item(name, data, user=_user(request)[0])]))[0]
        if isinstance(done, StoreUnavailable):
            raise HTTPException(507 if isinstance(done, StoreFull) else 503, f"not stored: {done}")
        if not isinstance(done, Inspected):
            raise HTTPException(400, str(done))
        stored = dict(done.row, created=done.row["created"].isoformat(timespec="milliseconds"))
        extra: dict[str, Any] = {} if done.category is None else {"category": done.category}
        if inline:
            overlay = await run_in_threadpool(done.overlay_png)  # drawing a photo-sized PNG: not on the loop
            extra |= {"overlay_png_base64": base64.b64encode(overlay).decode(),
                      "mask_png_base64": base64.b64encode(done.mask_png).decode()}
        return _out(stored, **extra)

    @app.get("/results", response_model=ResultsPage)
    def results(limit: int = Query(50, ge=0, le=500), offset: int = Query(0, ge=0, le=2**53),
                decision: str | None = Query(None, pattern="^(pass|review|reject|unknown)$")) -> ResultsPage:
        """The prediction history, newest first."""
        total, rows = store.list(limit, offset, decision)
        return ResultsPage(total=total, limit=limit, offset=offset, items=[_out(r) for r in rows])

    @app.get("/results/{record_id}", response_model=PredictionOut)
    def result(record_id: str) -> PredictionOut:
        """One stored prediction."""
        row = store.get(record_id)
        if row is None:
            raise HTTPException(404, f"no prediction {_short(record_id)!r}")
        return _out(row)

    @app.get("/results/{record_id}/{kind}", responses={200: {"content": {"image/png": {}}}})
    def result_file(record_id: str, kind: str) -> FileResponse:
        """A stored file of a prediction: image (as uploaded), overlay, mask, map or thumb (PNG)."""
        row = store.get(record_id)
        if row is None or (kind not in row["files"] and kind not in DRAWN_LATER):
            raise HTTPException(404, f"no {_short(kind)!r} for prediction {_short(record_id)!r}")
        if kind not in row["files"]:  # drawn on first request (older records have theirs stored)
            try:
                return Response(drawn_file(store, row, kind), media_type="image/png")
            except CostfilterError as exc:
                raise HTTPException(404, str(exc)) from None
        name = row["files"][kind]
        path = store.file_path(record_id, name)
        if not path.is_file():
            raise HTTPException(404, f"the {kind!r} file of prediction {record_id!r} is missing from the store")
        media = "image/png" if name.endswith(".png") else MEDIA.get(name.rsplit(".", 1)[-1].upper(),
                                                                      ("", "application/octet-stream"))[1]
        return FileResponse(path, media_type=media)

    add_loop_routes(app, loop)

    page = resources.files("costfilter.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.head("/", include_in_schema=False)
    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app


def build_app(model_path: str, store_dir: str, db_url: str | None = None,
              max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, *, api_key: str | None = None,
              operator_key: str | None = None, keys: dict[str, tuple[str, str]] | None = None,
              allowed_hosts: Sequence[str] = LOCAL_HOSTS, cors_origins: Sequence[str] = (),
              sign_key: str | None = None, runtime: str | None = None) -> FastAPI:
    """Load the model (``.onnx`` through onnxruntime or ``runtime``, else a checkpoint) and the
    store; the app."""
    path = Path(model_path)
    det = open_scorer(path, sign_key=sign_key, runtime=runtime)
    return create_app(det, HistoryStore(store_dir, db_url), model_name=path.name, max_upload_mb=max_upload_mb,
                      api_key=api_key, operator_key=operator_key, keys=keys, allowed_hosts=allowed_hosts,
                      cors_origins=cors_origins, model_path=path, sign_key=sign_key)
