"""``costfilter`` command line: thin wrappers that parse options, call :mod:`costfilter.api`, print."""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .errors import CostfilterError

FORMATS = ["mvtec", "mpdd", "btad", "visa", "folder", "elpv"]


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into one line on stderr and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CostfilterError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing half-written was left behind", err=True)
            sys.exit(130)

    return wrapper


quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")


def _options(*options: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Several click options as one decorator, in the order given."""
    def apply(fn: Any) -> Any:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


tile_options = _options(
    click.option("--tile", type=int, default=None, help="Score large images in tiles of this many source pixels."),
    click.option("--overlap", type=int, default=None, help="Pixels shared by neighbouring tiles (with --tile)."),
)
clip_options = _options(
    click.option("--clip", "clip_model", type=click.Path(path_type=Path), default=None,
                 help="Zero-shot: local CLIP folder (Hugging Face format, safetensors) whose text prompts keep "
                      "damaged-looking patches out of the references."),
    click.option("--clip-object", default="object", show_default=True,
                 help="The object named in the CLIP prompts ('a photo of a damaged <object>')."),
)
force_option = click.option("--force", is_flag=True, help="Overwrite existing outputs.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="costfilter")
def main() -> None:
    """Unsupervised visual anomaly detection: fit on good images, score and localise defects."""


@main.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Checkpoint file to write.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="mvtec", show_default=True)
@click.option("--category", "-c", "categories", multiple=True, help="Category to fit on (repeat for several; default all).")
@click.option("--method", type=click.Choice(["memory", "costfilter", "dfm"]), default=None,
              help="memory (default): memory bank; costfilter: CostFilter-AD over a base; "
                   "dfm: differentiable matching, trained end to end.")
@click.option("--base", type=click.Choice(["memory", "reconstruction"]), default=None,
              help="CostFilter-AD's base detector (default memory).")
@click.option("--steps", type=int, default=None, help="CostFilter-AD training steps (default 300).")
@click.option("--time-budget", type=float, default=None, help="Stop CostFilter-AD training after this many seconds.")
@click.option("--textures", type=click.Path(path_type=Path), default=None,
              help="Folder of texture images (e.g. DTD) for synthetic anomalies (default: offline textures).")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Training-state file: saved during training, resumed from if it exists.")
@click.option("--backbone", default=None, help="efficientnet_lite0 (default), efficientnet_lite2, or timm:<model>.")
@click.option("--weights", type=click.Path(path_type=Path), default=None, help="Local weights file for the backbone.")
@click.option("--image-size", type=int, default=None, help="Square input size (multiple of 32; default 256).")
@click.option("--coreset-ratio", type=float, default=None, help="Fraction of patches kept in the bank (default 0.001).")
@click.option("--sampler", type=click.Choice(["greedy", "random"]), default=None)
@click.option("--false-reject", type=float, default=None,
              help="Target rate of good parts rejected, on held-out good images (default 0.01).")
@click.option("--review-band", type=float, default=None,
              help="Also mark 'review' above the threshold for this larger false-reject rate.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="YAML/JSON config file.")
@tile_options
@click.option("--seed", type=int, default=None)
@quiet_option
@force_option
@_friendly
def fit(data: Path, out: Path, fmt: str, categories: tuple[str, ...], method: str | None, base: str | None,
        steps: int | None, time_budget: float | None, textures: Path | None, resume: Path | None,
        backbone: str | None, weights: Path | None,
        image_size: int | None, coreset_ratio: float | None, sampler: str | None, false_reject: float | None,
        review_band: float | None, config_file: Path | None, tile: int | None, overlap: int | None, seed: int | None,
        quiet: bool, force: bool) -> None:
    """Fit a detector on the normal training images of DATA and save it to --out."""
    from .api import Detector
    from .atomic import check_writable
    from .config import DetectorConfig

    check_writable(out, force)  # fail before minutes of fitting, not after
    cfg = DetectorConfig.from_file(config_file) if config_file else DetectorConfig()
    for value, obj, attr in [
        (backbone, cfg.features, "backbone"), (str(weights) if weights else None, cfg.features, "weights"),
        (image_size, cfg.features, "image_size"), (coreset_ratio, cfg.memory, "coreset_ratio"),
        (sampler, cfg.memory, "sampler"), (false_reject, cfg.calibration, "false_reject_rate"),
        (review_band, cfg.calibration, "review_false_reject_rate"), (seed, cfg, "seed"), (method, cfg, "method"),
        (base, cfg.costfilter, "base"), (steps, cfg.costfilter, "steps"), (time_budget, cfg.costfilter, "time_budget_s"),
        (str(textures) if textures else None, cfg.costfilter, "texture_dir"), (tile, cfg.tiling, "size"),
        (overlap, cfg.tiling, "overlap"),
    ]:
        if value is not None:
            setattr(obj, attr, value)
    det = Detector(cfg, progress=not quiet).fit(data, fmt, categories or None, resume=resume)
    digest = det.save(out, force=force)
    t = det.thresholds
    assert t is not None
    click.echo(f"fitted {cfg.method} on {det.state['n_train_images']} normal images "
               f"({', '.join(det.state['categories'])}); bank {det.state['bank_size']} patches; "
               f"{det.state['timings']['fit_total_s']:.1f} s")
    if "training" in det.state:
        tr = det.state["training"]
        best = max(tr["validation"], key=lambda v: v["score"])
        click.echo(f"filter: {tr['steps']} steps ({tr['stopped_by']}), best validation step {tr['best_step']} "
                   f"(synthetic anomalies on held-out good images: I-AUROC {best['image_auroc']:.3f}, "
                   f"P-AP {best['pixel_ap']:.3f}); base-map weight λ = {tr['blend']}")
    _echo_points(det.state["operating_points"])
    click.echo(f"pixel threshold {t.pixel:.4f}; saved {out} (sha256 {digest[:12]}…)")
    _record(out.with_name(out.name + ".fit-record.json"), "fit", det, model=out,
            digest=det.state["training_data"])


def _echo_points(points: list[dict[str, Any]]) -> None:
    """The operating-point table, with a warning where the held-out images are too few."""
    from .report import format_table

    rows = [[p["name"], f"{p['target_false_reject']:g}", f"{p['threshold']:.4f}",
             f"{p['false_reject']:.2%} [{p['ci_low']:.2%}, {p['ci_high']:.2%}]", p["n_good"]] for p in points]
    click.echo(format_table(["operating point", "target false-reject", "image threshold",
                             "false-reject on held-out good (95 % CI)", "good images"], rows))
    for p in points:
        if p.get("warning"):
            click.echo(f"warning ({p['name']}): {p['warning']}")


def _record(path: Path, command: str, det: Any, **kw: Any) -> None:
    from .records import write_record

    write_record(path, command, config=det.config.to_dict(), **kw)


def _detector(model_or_method: Path | str, quiet: bool, clip_model: Path | None = None,
              clip_object: str = "object") -> Any:
    """Load a checkpoint or an exported ``.onnx`` model, or build a zero-shot detector (which needs none)."""
    from .api import Detector
    from .config import DetectorConfig

    if clip_model is not None and model_or_method != "zeroshot":
        raise CostfilterError("--clip applies to --method zeroshot only")
    if model_or_method == "zeroshot":
        cfg = DetectorConfig(method="zeroshot")
        cfg.zeroshot.clip_model = str(clip_model) if clip_model else None
        cfg.zeroshot.clip_object = clip_object
        return Detector(cfg, progress=not quiet)
    if Path(model_or_method).suffix.lower() == ".onnx":
        from .export import OnnxDetector

        return OnnxDetector(model_or_method)
    return Detector.load(model_or_method, progress=not quiet)


@main.command()
@click.argument("args", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="[MODEL] DATA")
@click.option("--method", type=click.Choice(["zeroshot"]), default=None,
              help="zeroshot: no MODEL; each test image is scored against the others of its batch.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="mvtec", show_default=True)
@click.option("--category", "-c", "categories", multiple=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write metrics as JSON.")
@click.option("--eval-size", type=int, default=None, help="Resolution of pixel metrics (default: model size).")
@click.option("--mask-threshold", type=int, default=0, show_default=True, help="Mask pixel is defect if value > this.")
@clip_options
@quiet_option
@force_option
@_friendly
def test(args: tuple[Path, ...], method: str | None, fmt: str, categories: tuple[str, ...], json_out: Path | None,
         eval_size: int | None, mask_threshold: int, clip_model: Path | None, clip_object: str, quiet: bool,
         force: bool) -> None:
    """Evaluate MODEL (or --method zeroshot) on the test split of DATA: per-category table and mean."""
    from datetime import datetime, timezone

    from .atomic import check_writable, write_text
    from .report import environment, metrics_table

    if len(args) != (1 if method else 2):
        raise CostfilterError("usage: costfilter test MODEL DATA, or costfilter test --method zeroshot DATA")
    model, data = (method, args[0]) if method else (args[0], args[1])
    if json_out:
        check_writable(json_out, force)
    det = _detector(model, quiet, clip_model, clip_object)
    ev = det.evaluate(data, fmt, categories or None, eval_size=eval_size, mask_threshold=mask_threshold)
    click.echo(metrics_table(ev.per_category, ev.mean))
    intervals = _bootstrap(ev)
    for cat, ci in intervals.items():
        click.echo(f"{cat}: I-AUROC 95 % CI [{ci['image_auroc'][0]:.3f}, {ci['image_auroc'][1]:.3f}], "
                   f"I-AP 95 % CI [{ci['image_ap'][0]:.3f}, {ci['image_ap'][1]:.3f}] (seeded bootstrap, 1000×)")
    click.echo(f"{len(ev.samples)} images in {ev.seconds:.1f} s ({ev.images_per_second:.1f} images/s)")
    payload = {"model": str(model), "model_sha256": det.state.get("sha256"), "data": str(data),
               "per_category": ev.per_category, "mean": ev.mean, "bootstrap_95": intervals, "seconds": ev.seconds,
               "environment": environment()}
    if json_out:
        write_text(json_out, json.dumps(payload, indent=2))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    record = json_out.with_name(json_out.name + ".record.json") if json_out else Path("runs") / "records" / f"test-{stamp}.json"
    _record(record, "test", det, model=None if method else Path(model), inputs=[r.path for r in ev.samples],
            timings={"test_s": ev.seconds}, extra={"mean": ev.mean})


def _bootstrap(ev: Any) -> dict[str, dict[str, tuple[float, float]]]:
    from .calibration import bootstrap_interval
    from .metrics import auroc, average_precision, binary_curve

    out = {}
    for cat in ev.per_category:
        recs = [r for r in ev.samples if r.category == cat]
        s, y = [r.score for r in recs], [r.label for r in recs]
        if len(set(y)) == 2:
            out[cat] = {"image_auroc": bootstrap_interval(s, y, lambda a, b: auroc(binary_curve(a, b))),
                        "image_ap": bootstrap_interval(s, y, lambda a, b: average_precision(binary_curve(a, b)))}
    return out


def _expand(paths: tuple[Path, ...]) -> list[Path]:
    from .data.imageio import list_images

    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            files = list_images(p)
            if not files:
                raise CostfilterError(f"{p}: folder holds no images")
            out += files
        elif p.exists():
            out.append(p)
        else:
            raise CostfilterError(f"{p}: file not found")
    return out


@main.command()
@click.argument("args", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="[MODEL] PATH...")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Folder for overlays, masks, tables.")
@click.option("--method", type=click.Choice(["zeroshot"]), default=None,
              help="zeroshot: no MODEL; images are scored against each other in batches.")
@tile_options
@clip_options
@quiet_option
@force_option
@_friendly
def predict(args: tuple[Path, ...], out: Path, method: str | None, tile: int | None, overlap: int | None,
            clip_model: Path | None, clip_object: str, quiet: bool, force: bool) -> None:
    """Score images (files or folders) with MODEL (a checkpoint, an exported .onnx file, or
    --method zeroshot): decision, heat-map overlay with defect regions, mask, results.csv/jsonl
    and a run record."""
    from .outputs import prepare_out_dir, write_predictions

    model, paths = (method, args) if method else (args[0], args[1:])
    if not paths:
        raise CostfilterError("no images given: costfilter predict MODEL PATH... --out DIR")
    files = _expand(paths)
    det = _detector(model, quiet, clip_model, clip_object)
    if tile is not None or overlap is not None:
        fitted = (det.config.tiling.size, det.config.tiling.overlap)
        det.config.tiling.size = det.config.tiling.size if tile is None else tile
        det.config.tiling.overlap = det.config.tiling.overlap if overlap is None else overlap
        det.config.validate()
        if (det.config.tiling.size, det.config.tiling.overlap) != fitted and not method:
            click.echo(f"warning: the model's thresholds were calibrated with tile {fitted[0] or 'off'}, overlap "
                       f"{fitted[1]}; scores with other tiling are not comparable to them", err=True)
    prepare_out_dir(out, force)
    t0 = time.perf_counter()
    preds = det.predict(files)
    pixel = det.thresholds.pixel if det.thresholds else 0.0
    write_predictions(preds, out, pixel, det.config.calibration.min_region_area)
    counts = {d: sum(p.decision == d for p in preds) for d in ("pass", "review", "reject", "unknown")}
    click.echo(f"{len(preds)} images: " + ", ".join(f"{n} {d}" for d, n in counts.items() if n or d != "unknown")
               + f"; results in {out}")
    _record(out / "run-record.json", "predict", det, model=None if method else Path(model), inputs=files,
            timings={"predict_s": time.perf_counter() - t0}, extra={"decisions": counts})


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("good", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Write the re-calibrated model here (default: replace MODEL, needs --force).")
@click.option("--false-reject", type=float, default=None, help="Target false-reject rate for the image threshold.")
@click.option("--threshold", type=float, default=None, help="A fixed image threshold instead of a target rate.")
@quiet_option
@force_option
@_friendly
def calibrate(model: Path, good: tuple[Path, ...], out: Path | None, false_reject: float | None,
              threshold: float | None, quiet: bool, force: bool) -> None:
    """Re-calibrate MODEL's thresholds on new GOOD images (files or folders), without refitting.

    The images must not be among those the model was fitted on. Reports how far their scores moved
    from the stored ones.
    """
    from .api import Detector
    from .atomic import check_writable

    target = out or model
    check_writable(target, force)
    files = _expand(good)
    det = Detector.load(model, progress=not quiet)
    if false_reject is not None:
        det.config.calibration.false_reject_rate = false_reject
    t0 = time.perf_counter()
    shift = det.calibrate(files)
    if threshold is not None:
        det.set_operating_point(threshold=threshold)
    if shift:
        click.echo(f"good-image scores moved: median {shift['previous_median']:.4f} → {shift['new_median']:.4f} "
                   f"({shift['median_shift']:+.4f}); KS statistic {shift['ks_statistic']:.3f} "
                   f"(p = {shift['ks_pvalue']:.3g})")
    _echo_points(det.state["operating_points"])
    det.save(target, force=True)
    click.echo(f"saved {target}")
    _record(target.with_name(target.name + ".calibrate-record.json"), "calibrate", det, model=target, inputs=files,
            timings={"calibrate_s": time.perf_counter() - t0}, extra={"score_shift": shift})


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="File to write (model.onnx).")
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("--check", "check", multiple=True, type=click.Path(path_type=Path),
              help="Images or folders to compare exported and eager results on (repeatable).")
@force_option
@_friendly
def export(model: Path, out: Path, fmt: str, check: tuple[Path, ...], force: bool) -> None:
    """Export MODEL to ONNX: raw (B, H, W, 3) uint8 images in; anomaly map and score out.

    Resize, normalisation, smoothing and scoring are inside the graph, thresholds in its metadata;
    `costfilter predict model.onnx ...` runs it with onnxruntime.
    """
    from .api import Detector
    from .atomic import check_writable
    from .export import OnnxDetector, compare_predictions, export_onnx

    check_writable(out, force)
    det = Detector.load(model, progress=False)
    t0 = time.perf_counter()
    export_onnx(det, out, force=force)
    click.echo(f"exported {det.config.method} to {out} ({out.stat().st_size / 1e6:.1f} MB, "
               f"{time.perf_counter() - t0:.1f} s); inputs: images (B, H, W, 3) uint8 RGB; "
               f"outputs: anomaly_map (B, {det.config.features.image_size}, {det.config.features.image_size}), score (B,)")
    if check:
        files = _expand(check)
        diff = compare_predictions(det.predict(files), OnnxDetector(out).predict(files))
        click.echo(f"parity on {len(files)} images: max score difference {diff['max_score_rel_diff']:.2e} (relative), "
                   f"max map difference {diff['max_map_rel_diff']:.2e} (of the map's peak), "
                   f"decisions agree on {diff['decision_agreement']:.0%}")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--store", type=click.Path(path_type=Path), default=Path("runs/serve"), show_default=True,
              help="Folder for the history database and the stored images and heat-maps.")
@click.option("--db", "db_url", default=None,
              help="SQLAlchemy database URL for the history (default: SQLite file in --store), "
                   "e.g. postgresql+psycopg://user@host/db.")
@click.option("--max-upload-mb", type=float, default=20.0, show_default=True, help="Largest accepted upload.")
@_friendly
def serve(model: Path, host: str, port: int, store: Path, db_url: str | None, max_upload_mb: float) -> None:
    """Serve MODEL (a checkpoint or an exported .onnx file) over HTTP: POST /predict, GET /health,
    GET /results, the web page at /, the OpenAPI spec at /openapi.json."""
    try:
        import uvicorn
    except ImportError:
        raise CostfilterError("the service needs the serve extra: pip install 'costfilter[serve]'") from None
    from .serve import build_app

    app = build_app(str(model), str(store), db_url, max_upload_mb)
    click.echo(f"serving {model} on http://{host}:{port} (history in {db_url or store})")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@main.command("synth-preview")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="PNG file to write.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="mvtec", show_default=True)
@click.option("--textures", type=click.Path(path_type=Path), default=None, help="Folder of texture images.")
@click.option("--n", "count", type=int, default=12, show_default=True, help="Samples to show.")
@click.option("--size", type=int, default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@force_option
@_friendly
def synth_preview(data: Path, out: Path, fmt: str, textures: Path | None, count: int, size: int, seed: int,
                  force: bool) -> None:
    """Write a grid PNG of synthetic anomalies made from DATA's normal training images."""
    from .atomic import check_writable
    from .synth.preview import preview_grid

    check_writable(out, force)
    preview_grid(data, fmt, out, textures=textures, count=count, size=size, seed=seed)
    click.echo(f"wrote {out}")


@main.command()
@_friendly
def doctor() -> None:
    """Offline self-test: backbone weights, a tiny fit → predict, speed, optional extras."""
    from .doctor import run_doctor

    if not run_doctor(click.echo):
        sys.exit(1)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@_friendly
def info(model: Path) -> None:
    """Print what a checkpoint (or an exported .onnx file) holds: method, backbone, data,
    thresholds, versions."""
    from .checkpoint import load_checkpoint

    if model.suffix.lower() == ".onnx":
        _info_onnx(model)
        return
    _, config, state, digest = load_checkpoint(model)
    t = state.get("thresholds", {})
    data = state.get("training_data") or {}
    env = state.get("environment", {})
    lines = [
        f"model        {model}",
        f"sha256       {digest}",
        f"method       {config['method']}; backbone {config['features']['backbone']} layers "
        f"{config['features']['layers']}; input {config['features']['image_size']} px",
        f"trained on   {state.get('n_train_images')} normal images ({', '.join(state.get('categories', []))}); "
        f"data digest {data.get('sha256', '?')[:16]}… ({data.get('bytes', 0) / 1e6:.1f} MB)",
        f"bank         {state.get('bank_size')} patches (coreset ratio {config['memory']['coreset_ratio']}, "
        f"{config['memory']['sampler']})",
        f"thresholds   image {t.get('image', float('nan')):.4f}"
        + (f", review above {t['review']:.4f}" if t.get("review") is not None else "")
        + f", pixel {t.get('pixel', float('nan')):.4f}; from {t.get('n_calibration')} held-out good images"
        + (f"; unknown if typical patch > {t['ood_limit']:.3f}" if t.get("ood_limit") is not None else ""),
        f"created      {state.get('created')} with costfilter {env.get('versions', {}).get('costfilter', '?')}, "
        f"torch {env.get('versions', {}).get('torch', '?')}",
    ]
    click.echo("\n".join(lines))
    if state.get("operating_points"):
        _echo_points(state["operating_points"])


def _info_onnx(path: Path) -> None:
    from .export import OnnxDetector

    det = OnnxDetector(path)
    t, f = det.thresholds, det.config.features
    assert t is not None
    click.echo("\n".join([
        f"model        {path} (ONNX, runs with onnxruntime)",
        f"sha256       {det.state['sha256']}",
        f"exported     from checkpoint sha256 {det.state['source_sha256'] or '?'}",
        f"method       {det.config.method}; backbone {f.backbone}; input {f.image_size} px"
        + (f"; tiles {det.config.tiling.size} px, overlap {det.config.tiling.overlap}" if det.config.tiling.size else ""),
        f"categories   {', '.join(det.state['categories'])}",
        f"thresholds   image {t.image:.4f}" + (f", review above {t.review:.4f}" if t.review is not None else "")
        + f", pixel {t.pixel:.4f}; from {t.n_calibration} held-out good images",
    ]))
    if det.state["operating_points"]:
        _echo_points(det.state["operating_points"])


@main.group()
def benchmark() -> None:
    """Reproducible benchmarks that print a table and write JSON."""


@benchmark.command("elpv")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=Path("runs/benchmark/elpv.json"),
              show_default=True)
@click.option("--heatmaps", type=click.Path(path_type=Path), default=None, help="Folder for example heat-maps.")
@click.option("--coreset-ratio", type=float, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@quiet_option
@force_option
@_friendly
def benchmark_elpv(json_out: Path, heatmaps: Path | None, coreset_ratio: float | None, seed: int,
                   quiet: bool, force: bool) -> None:
    """ELPV solar cells: fit on 70 % of functional cells, test on the rest vs defective cells."""
    from .bench.elpv import run_elpv

    run_elpv(json_out, heatmaps=heatmaps, coreset_ratio=coreset_ratio, seed=seed, progress=not quiet, force=force)


@benchmark.command("methods")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=Path("runs/benchmark/methods.json"),
              show_default=True)
@click.option("--dfm-budget", type=float, default=150.0, show_default=True, help="DFM training seconds.")
@click.option("--seed", type=int, default=0, show_default=True)
@force_option
@_friendly
def benchmark_methods(json_out: Path, dfm_budget: float, seed: int, force: bool) -> None:
    """ELPV with every method side by side: memory bank, DFM, zero-shot."""
    from .bench.methods import run_methods

    run_methods(json_out, dfm_budget_s=dfm_budget, seed=seed, force=force)


@benchmark.command("costfilter")
@click.option("--data", "root", type=click.Path(path_type=Path), default=Path("../shared/data"), show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=Path("runs/benchmark/costfilter.json"),
              show_default=True)
@click.option("--figures", type=click.Path(path_type=Path), default=Path("runs/benchmark"), show_default=True)
@click.option("--budget", type=float, default=120.0, show_default=True, help="Training seconds per masked category and base.")
@click.option("--elpv-budget", type=float, default=200.0, show_default=True, help="Training seconds on ELPV per base.")
@force_option
@_friendly
def benchmark_costfilter(root: Path, json_out: Path, figures: Path, budget: float, elpv_budget: float,
                         force: bool) -> None:
    """CostFilter-AD vs its base (memory bank, reconstruction) on ELPV and masked categories."""
    from .bench.costfilter import run_costfilter

    run_costfilter(json_out, figures, masked_root=root, budget_s=budget, elpv_budget_s=elpv_budget, force=force)


@benchmark.command("export")
@click.option("--data", "root", type=click.Path(path_type=Path), default=Path("../shared/data"), show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=Path("runs/benchmark/export.json"),
              show_default=True)
@click.option("--budget", type=float, default=60.0, show_default=True, help="DFM / CostFilter-AD training seconds.")
@force_option
@_friendly
def benchmark_export(root: Path, json_out: Path, budget: float, force: bool) -> None:
    """ONNX export parity (scores, maps, decisions) and latency vs eager on real masked categories."""
    from .bench.deploy import run_export

    run_export(json_out, root, cf_budget_s=budget, force=force)


@benchmark.command("load")
@click.option("--category", type=click.Path(path_type=Path), default=Path("../shared/data/mpdd/metal_plate"),
              show_default=True, help="MVTec-layout category: fit on its good images, upload its test images.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=Path("runs/benchmark/load_test.json"),
              show_default=True)
@click.option("--requests", type=int, default=120, show_default=True, help="Requests per client count (bounded).")
@click.option("--clients", type=int, multiple=True, default=(1, 4), show_default=True)
@click.option("--time-limit", type=float, default=120.0, show_default=True, help="Seconds per client count, at most.")
@force_option
@_friendly
def benchmark_load(category: Path, json_out: Path, requests: int, clients: tuple[int, ...], time_limit: float,
                   force: bool) -> None:
    """Load test of `costfilter serve` on 127.0.0.1: requests/s and p50/p95 latency of POST /predict."""
    from .bench.deploy import run_load_test

    run_load_test(json_out, category, requests=requests, concurrency=clients, time_limit_s=time_limit, force=force)


@benchmark.command("masked")
@click.option("--data", "root", type=click.Path(path_type=Path), default=Path("../shared/data"), show_default=True,
              help="Root of MVTec-layout categories.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=Path("runs/benchmark/masked.json"),
              show_default=True)
@click.option("--size", type=int, default=256, show_default=True)
@click.option("--figures", type=click.Path(path_type=Path), default=None, help="Folder for grids and curves.")
@click.option("--methods", default="memory", show_default=True, help="Comma-separated methods to compare.")
@click.option("--no-multi", is_flag=True, help="Skip the multi-class run.")
@click.option("--seed", type=int, default=0, show_default=True)
@quiet_option
@force_option
@_friendly
def benchmark_masked(root: Path, json_out: Path, size: int, figures: Path | None, methods: str, no_multi: bool,
                     seed: int, quiet: bool, force: bool) -> None:
    """Pixel-level benchmark on every MVTec-layout category under --data, single- and multi-class."""
    from .bench.masked import run_masked

    run_masked(root, json_out, size=size, figures=figures, methods=tuple(m.strip() for m in methods.split(",")),
               multi=not no_multi, seed=seed, force=force)


if __name__ == "__main__":  # pragma: no cover
    main()
