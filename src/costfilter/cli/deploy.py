"""``costfilter export`` and ``serve``: a model put to work outside Python."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..errors import CostfilterError
from .common import expand, force_option, friendly


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="File to write (model.onnx).")
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("--check", "check", multiple=True, type=click.Path(path_type=Path),
              help="Images or folders to compare exported and eager results on (repeatable).")
@force_option
@friendly
def export(model: Path, out: Path, fmt: str, check: tuple[Path, ...], force: bool) -> None:
    """Export MODEL to ONNX: raw (B, H, W, 3) uint8 images in; anomaly map and score out.

    Resize, normalisation, smoothing and scoring are inside the graph, thresholds in its metadata;
    `costfilter predict model.onnx ...` runs it with onnxruntime.
    """
    from ..api import Detector
    from ..atomic import check_writable
    from ..export import OnnxDetector, compare_predictions, export_onnx

    check_writable(out, force)
    det = Detector.load(model, progress=False)
    t0 = time.perf_counter()
    export_onnx(det, out, force=force)
    click.echo(f"exported {det.config.method} to {out} ({out.stat().st_size / 1e6:.1f} MB, "
               f"{time.perf_counter() - t0:.1f} s); inputs: images (B, H, W, 3) uint8 RGB; "
               f"outputs: anomaly_map (B, {det.config.features.image_size}, {det.config.features.image_size}), score (B,)")
    if check:
        files = expand(check)
        diff = compare_predictions(det.predict(files), OnnxDetector(out).predict(files))
        click.echo(f"parity on {len(files)} images: max score difference {diff['max_score_rel_diff']:.2e} (relative), "
                   f"max map difference {diff['max_map_rel_diff']:.2e} (of the map's peak), "
                   f"decisions agree on {diff['decision_agreement']:.0%}")


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--store", type=click.Path(path_type=Path), default=Path("runs/serve"), show_default=True,
              help="Folder for the history database and the stored images and heat-maps.")
@click.option("--db", "db_url", default=None,
              help="SQLAlchemy database URL for the history (default: SQLite file in --store), "
                   "e.g. postgresql+psycopg://user@host/db.")
@click.option("--max-upload-mb", type=float, default=20.0, show_default=True, help="Largest accepted upload.")
@friendly
def serve(model: Path, host: str, port: int, store: Path, db_url: str | None, max_upload_mb: float) -> None:
    """Serve MODEL (a checkpoint or an exported .onnx file) over HTTP: POST /predict, GET /health,
    GET /results, the web page at /, the OpenAPI spec at /openapi.json."""
    try:
        import uvicorn
    except ImportError:
        raise CostfilterError("the service needs the serve extra: pip install 'costfilter[serve]'") from None
    from ..serve import build_app

    app = build_app(str(model), str(store), db_url, max_upload_mb)
    click.echo(f"serving {model} on http://{host}:{port} (history in {db_url or store})")
    uvicorn.run(app, host=host, port=port, log_level="warning")


COMMANDS = [export, serve]
