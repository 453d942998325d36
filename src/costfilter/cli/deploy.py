"""``costfilter export`` and ``serve``: a model put to work outside Python."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import click

from ..errors import CostfilterError
from ..names import INT8_CALIBRATIONS, INT8_SCOPES
from .common import device_options, expand, force_option, friendly, max_pixels_option, runtime_option, sign_key_option


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="File to write (model.onnx).")
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("--check", "check", multiple=True, type=click.Path(path_type=Path),
              help="Images or folders to compare exported and eager results on (repeatable). With --int8, "
                   "the file is kept only if every decision on them equals the float32 model's.")
@click.option("--int8", "int8", multiple=True, type=click.Path(path_type=Path),
              help="Quantise the backbone to INT8, calibrated on these good images or folders (repeatable; "
                   "at most 64 images, evenly spaced, are used). Never give it defects.")
@click.option("--int8-calibration", type=click.Choice(INT8_CALIBRATIONS), default=INT8_CALIBRATIONS[0],
              show_default=True,
              help="How activation ranges are set from the calibration images.")
@click.option("--int8-convs", type=click.Choice(INT8_SCOPES), default=INT8_SCOPES[0], show_default=True,
              help="Quantise the dense convolutions only (depthwise ones stay float32), or all of them.")
@sign_key_option
@force_option
@friendly
def export(model: Path, out: Path, fmt: str, check: tuple[Path, ...], int8: tuple[Path, ...], int8_calibration: str,
           int8_convs: str, sign_key: str | None, force: bool) -> None:
    """Export MODEL to ONNX: raw (B, H, W, 3) uint8 images in; anomaly map and score out.

    Resize, normalisation, smoothing and scoring are inside the graph, thresholds in its metadata,
    a SHA-256 over the whole file (and, with a signing key, its signature) beside them;
    `costfilter predict model.onnx ...` runs it with onnxruntime.
    """
    from ..api import Detector
    from ..atomic import atomic_path, check_writable
    from ..export import OnnxDetector, compare_predictions, export_onnx

    check_writable(out, force)
    calibration = expand(int8) if int8 else None  # a folder without images is a one-line error here
    det = Detector.load(model, progress=False, sign_key=sign_key)
    t0 = time.perf_counter()
    # Written beside OUT first: an INT8 file that changes a decision on the check images is not kept.
    with atomic_path(out) as tmp:
        meta = export_onnx(det, tmp, force=True, sign_key=sign_key, int8=calibration,
                           int8_calibration=int8_calibration, int8_scope=int8_convs)
        seconds = time.perf_counter() - t0
        for reason in meta.get("int8_skipped", []):
            click.echo(f"skipped calibration image {reason}", err=True)
        if check:
            files = expand(check)
            diff = compare_predictions(det.predict(files), OnnxDetector(tmp, sign_key=sign_key).predict(files))
            click.echo(f"parity on {len(files)} images: max score difference {diff['max_score_rel_diff']:.2e} "
                       f"(relative), max map difference {diff['max_map_rel_diff']:.2e} (of the map's peak), "
                       f"decisions agree on {diff['decision_agreement']:.0%}")
            if calibration and diff["decision_agreement"] < 1.0:
                changed = round((1 - diff["decision_agreement"]) * len(files))
                raise CostfilterError(f"INT8 changes {changed} of {len(files)} decisions on the check images, so "
                                      f"{out} was not written; export without --int8 for this model")
        elif calibration:
            click.echo("note: without --check images, nobody compared this INT8 model's decisions with float32's; "
                       "give --check FOLDER before putting it on a line", err=True)
        size = tmp.stat().st_size
        if out.exists() and not force:  # it appeared while we exported: someone else's file
            raise CostfilterError(f"{out}: appeared while exporting; not overwritten (use --force)")
    facts = json.loads(meta.get("int8", "{}"))
    what = (f"{det.config.method} (INT8 backbone: {facts['quantized_convs']} convolutions, "
            f"{facts['calibration_images']} calibration images)" if facts else det.config.method)
    s = det.config.features.image_size
    click.echo(f"exported {what} to {out} ({size / 1e6:.1f} MB, {seconds:.1f} s); inputs: images (B, H, W, 3) "
               f"uint8 RGB; outputs: anomaly_map (B, {s}, {s}), score (B,)")


@click.command()
@click.argument("model", type=click.Path(path_type=Path), required=False)
@click.option("--station", "station_file", type=click.Path(path_type=Path), default=None,
              help="A station file (YAML): its model, store, hot folders, streams and sinks run with the service.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--store", type=click.Path(path_type=Path), default=None,
              help="Folder for the history database and the stored images and heat-maps [default: runs/serve, "
                   "or the station file's store].")
@click.option("--db", "db_url", default=None,
              help="SQLAlchemy database URL for the history (default: SQLite file in --store), "
                   "e.g. postgresql+psycopg://user@host/db.")
@click.option("--max-upload-mb", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              help="Largest accepted upload.")
@click.option("--api-key", envvar="COSTFILTER_API_KEY", default=None, show_envvar=True,
              help="An admin key (named 'admin'): 'Authorization: Bearer KEY' on every route but / and /health "
                   "(prefer the variable).")
@click.option("--operator-key", envvar="COSTFILTER_OPERATOR_KEY", default=None, show_envvar=True,
              help="An operator key (named 'operator'): inspect, review and give verdicts, but not apply or roll back.")
@click.option("--key-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Named keys with roles (YAML; `costfilter keys new NAME --file FILE` makes them).")
@click.option("--allowed-host", "allowed_hosts", multiple=True,
              help="Another Host name the service answers to (default: localhost names and the bind address).")
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="A web origin (https://site) allowed to call the service from a browser (default: none).")
@runtime_option
@device_options
@max_pixels_option
@sign_key_option
@friendly
def serve(model: Path | None, station_file: Path | None, host: str, port: int, store: Path | None,
          db_url: str | None, max_upload_mb: float, api_key: str | None, operator_key: str | None,
          key_file: Path | None, allowed_hosts: tuple[str, ...],
          cors_origins: tuple[str, ...], runtime: str | None, max_pixels: int, sign_key: str | None) -> None:
    """Serve MODEL (a checkpoint or an exported .onnx file) over HTTP: POST /predict, GET /health,
    GET /metrics, GET /results, the web page at /, the OpenAPI spec at /openapi.json.

    With --station FILE instead of MODEL, the station's hot folders and streams are inspected and
    their results delivered to its sinks while the service runs (see `costfilter watch`)."""
    try:
        import uvicorn
    except ImportError:
        raise CostfilterError("the service needs the serve extra: pip install 'costfilter[serve]'") from None
    from ..serve import build_app, create_app
    from ..serve.security import LOCAL_HOSTS, load_key_file

    if (model is None) == (station_file is None):
        raise CostfilterError("give MODEL or --station FILE (the station file names its model)")
    if station_file is not None and (store is not None or db_url is not None or runtime is not None):
        raise CostfilterError("with --station, the store, database and runtime come from the station file")
    keys = load_key_file(str(key_file)) if key_file is not None else None
    sock = _listen(host, port)  # before the model loads: a port in use is a one-line error at once
    hosts = list(LOCAL_HOSTS) + list(allowed_hosts) + ([] if host in ("0.0.0.0", "::") else [host])
    try:
        if station_file is not None:
            from ..station import Station, load_station
            from .station import log_to_stderr

            log_to_stderr()
            cfg = load_station(station_file)
            station = Station(cfg, sign_key=sign_key)
            app = create_app(station.detector, station.store, model_name=cfg.model.name, max_upload_mb=max_upload_mb,
                             api_key=api_key or None, operator_key=operator_key or None, keys=keys,
                             allowed_hosts=hosts, cors_origins=cors_origins, station=station,
                             sign_key=sign_key)
            model, where = cfg.model, cfg.db or cfg.store
        else:
            where = db_url or store or Path("runs/serve")
            app = build_app(str(model), str(store or Path("runs/serve")), db_url, max_upload_mb,
                            api_key=api_key or None, operator_key=operator_key or None, keys=keys,
                            allowed_hosts=hosts, cors_origins=cors_origins, sign_key=sign_key, runtime=runtime)
        click.echo(f"serving {model} on http://{host}:{port} (history in {where}"
                   + ("; API key required" if api_key or operator_key or keys else "") + ")")
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    finally:
        sock.close()


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``, handed to uvicorn, so the address is ours from
    here on (uvicorn's own bind failure would end in its log line and exit status 3)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise CostfilterError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:  # a port in use, or an address this machine does not have
        sock.close()
        raise CostfilterError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sock


COMMANDS = [export, serve]
