"""``costfilter test``, ``predict`` and ``calibrate``: a model at work on images."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import click

from ..errors import CostfilterError
from .common import (
    clip_options,
    detector,
    device_options,
    echo_points,
    expand,
    force_option,
    format_option,
    friendly,
    max_pixels_option,
    options,
    quiet_option,
    record,
    runtime_option,
    sign_key_option,
    tile_options,
)
from .distributed import ray_predict_options

#: what every command that scores images with a model takes
scoring_options = options(clip_options, device_options, max_pixels_option, sign_key_option, quiet_option, force_option)


@click.command()
@click.argument("args", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="[MODEL] DATA")
@click.option("--method", type=click.Choice(["zeroshot"]), default=None,
              help="zeroshot: no MODEL; each test image is scored against the others of its batch.")
@format_option
@click.option("--category", "-c", "categories", multiple=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write metrics as JSON.")
@click.option("--eval-size", type=int, default=None, help="Resolution of pixel metrics (default: model size).")
@click.option("--mask-threshold", type=int, default=0, show_default=True, help="Mask pixel is defect if value > this.")
@scoring_options
@friendly
def test(args: tuple[Path, ...], method: str | None, fmt: str, categories: tuple[str, ...], json_out: Path | None,
         eval_size: int | None, mask_threshold: int, clip_model: Path | None, clip_object: str,
         zs_backbone: str | None, zs_preset: str | None, max_pixels: int, sign_key: str | None, quiet: bool,
         force: bool) -> None:
    """Evaluate MODEL (or --method zeroshot) on the test split of DATA: per-category table and mean."""
    from ..atomic import check_writable, write_text
    from ..provenance import environment
    from ..tables import metrics_table

    if len(args) != (1 if method else 2):
        raise CostfilterError("usage: costfilter test MODEL DATA, or costfilter test --method zeroshot DATA")
    model, data = (method, args[0]) if method else (args[0], args[1])
    if json_out:
        check_writable(json_out, force)
        check_writable(json_out.with_name(json_out.name + ".record.json"), force)
    det = detector(model, quiet, clip_model, clip_object, sign_key, backbone=zs_backbone, preset=zs_preset)
    ev = det.evaluate(data, fmt, categories or None, eval_size=eval_size, mask_threshold=mask_threshold)
    click.echo(metrics_table(ev.per_category, ev.mean))
    intervals = bootstrap(ev)
    for cat, ci in intervals.items():
        click.echo(f"{cat}: I-AUROC 95 % CI [{ci['image_auroc'][0]:.3f}, {ci['image_auroc'][1]:.3f}], "
                   f"I-AP 95 % CI [{ci['image_ap'][0]:.3f}, {ci['image_ap'][1]:.3f}] (seeded bootstrap, 1000×)")
    points = points_by_category(det, ev)
    if points:
        click.echo("At the model's operating points (an image whose score is above the threshold is rejected):\n"
                   + points_table(points))
    click.echo(f"{len(ev.samples)} images in {ev.seconds:.1f} s ({ev.images_per_second:.1f} images/s)")
    payload = {"model": str(model), "model_sha256": det.state.sha256, "data": str(data),
               "per_category": ev.per_category, "mean": ev.mean, "bootstrap_95": intervals,
               "operating_points": {c: [_finite(dataclasses.asdict(x)) for x in ps] for c, ps in points.items()},
               "seconds": ev.seconds, "environment": environment()}
    if json_out:  # the metrics and, beside them, the run record (without --json nothing is written)
        write_text(json_out, json.dumps(payload, indent=2))
        record(json_out.with_name(json_out.name + ".record.json"), "test", det, model=None if method else Path(model),
               inputs=[r.path for r in ev.samples], timings={"test_s": ev.seconds}, extra={"mean": ev.mean})


def points_by_category(det: Any, ev: Any) -> dict[str, list[Any]]:
    """Each tested category's operating points (its learned category's, for a model that learned
    several) on its test images; none for zero-shot, which decides each batch on its own."""
    from ..decisions import points_on_test

    if det.zero_shot:
        return {}
    learned = {c.name: c.operating_points for c in det.state.learned}
    out = {}
    for cat in ev.per_category:
        points = learned.get(cat) if learned else det.state.operating_points
        recs = [r for r in ev.samples if r.category == cat]
        if points and recs:
            out[cat] = points_on_test(points, [r.score for r in recs], [r.label for r in recs])
    return out


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with NaN (no image of that kind in the split) as None: JSON has no NaN."""
    return {k: None if isinstance(v, float) and v != v else v for k, v in row.items()}


def points_table(points: dict[str, list[Any]]) -> str:
    """One row per category and operating point: false-reject rate and recall with exact 95 % intervals."""
    from ..tables import format_table

    def rate(value: float, ci: tuple[float, float], n: int) -> str:
        if n == 0:
            return "— (none)"
        return f"{value:.1%} [{ci[0]:.1%}, {ci[1]:.1%}] of {n}"

    rows = [[cat, p.name, f"{p.target_false_reject:g}", f"{p.threshold:.4f}",
             rate(p.false_reject, p.false_reject_ci, p.n_good), rate(p.recall, p.recall_ci, p.n_defective)]
            for cat, ps in points.items() for p in ps]
    return format_table(["category", "operating point", "target false-reject", "threshold",
                         "false-reject on test good (95 % CI)", "recall on test defects (95 % CI)"], rows)


def bootstrap(ev: Any) -> dict[str, dict[str, tuple[float, float]]]:
    from ..decisions import bootstrap_intervals
    from ..metrics import auroc, average_precision, binary_curve

    def both(a: Any, b: Any) -> tuple[float, float]:
        curve = binary_curve(a, b)  # one sort per resample serves both
        return auroc(curve), average_precision(curve)

    out = {}
    for cat in ev.per_category:
        recs = [r for r in ev.samples if r.category == cat]
        s, y = [r.score for r in recs], [r.label for r in recs]
        if len(set(y)) == 2:
            out[cat] = bootstrap_intervals(s, y, both, ["image_auroc", "image_ap"])
    return out


@click.command()
@click.argument("args", nargs=-1, required=True, metavar="[MODEL] PATH...")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Folder for overlays, masks, tables.")
@click.option("--method", type=click.Choice(["zeroshot"]), default=None,
              help="zeroshot: no MODEL; images are scored against each other in batches.")
@tile_options
@runtime_option
@ray_predict_options
@scoring_options
@friendly
def predict(args: tuple[str, ...], out: Path, method: str | None, tile: int | None, overlap: int | None,
            runtime: str | None, engine: str, ray_address: str | None, actors: int, batch_size: int | None,
            cpus_per_actor: float, gpus_per_actor: float, save_maps: bool, clip_model: Path | None, clip_object: str,
            zs_backbone: str | None, zs_preset: str | None, max_pixels: int, sign_key: str | None, quiet: bool,
            force: bool) -> None:
    """Score images (files or folders) with MODEL (a checkpoint, an exported .onnx file, or
    --method zeroshot): decision, heat-map overlay with defect regions, mask, results.csv/jsonl
    and a run record. An image that cannot be read is an 'error' row with the reason; the others
    are scored, and the exit status is then 1.

    With --engine ray, PATH may also be a glob pattern, a .txt/.csv list of paths or a URI
    (s3://…); folders are searched recursively; results go to OUT/results.parquet, and a rerun
    into the same OUT scores only what is not there yet."""
    from ..result_files import check_out_dir, prepare_out_dir, staged, write_predictions

    model, sources = (method, args) if method else (args[0], args[1:])
    if not sources:
        raise CostfilterError("no images given: costfilter predict MODEL PATH... --out DIR")
    if engine == "ray":
        if any(x is not None for x in (tile, overlap, clip_model, runtime, zs_backbone, zs_preset)):
            raise CostfilterError("--tile, --overlap, --clip, --backbone, --preset and --runtime apply to the local "
                                  "engine (a model's own tiling is kept)")
        from .distributed import predict_ray

        return predict_ray(model, sources, out, address=ray_address, actors=actors, batch_size=batch_size,
                           cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor, save_maps=save_maps,
                           sign_key=sign_key, max_pixels=max_pixels, quiet=quiet, force=force)
    if save_maps or ray_address:
        raise CostfilterError("--save-maps and --ray-address apply to --engine ray (the local engine always draws maps)")
    check_out_dir(out, (), [Path(p) for p in sources])
    files = expand(tuple(sources), exclude=out)
    check_out_dir(out, files)
    det = detector(model, quiet, clip_model, clip_object, sign_key, runtime, backbone=zs_backbone,
                   preset=zs_preset)
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
    errors: list[tuple[str, str]] = []  # unreadable images become error rows; the rest are scored
    preds = det.predict(files, errors=errors)
    pixel = det.thresholds.pixel if det.thresholds else 0.0
    counts = {d: sum(p.decision == d for p in preds) for d in ("pass", "review", "reject", "unknown")}
    counts["error"] = len(errors)
    readable = {p.path for p in preds}
    with staged(out) as stage:  # an interrupted run leaves no overlay without its results table
        write_predictions(preds, stage, pixel, det.config.calibration.min_region_area, errors=errors,
                          order=[str(f) for f in files])
        record(stage / "run-record.json", "predict", det, model=None if method else Path(model),
               inputs=[f for f in files if str(f) in readable], timings={"predict_s": time.perf_counter() - t0},
               extra={"decisions": counts, "errors": [{"image": p, "error": m} for p, m in errors]})
    shown = [f"{n} {d}" for d, n in counts.items() if n or d not in ("unknown", "error")]
    click.echo(f"{len(files)} images: " + ", ".join(shown) + f"; results in {out}")
    for _, message in errors:
        click.echo(f"error: {message}", err=True)
    if errors:  # the rest were scored and written; a script must still see that some were not
        click.echo(f"{len(errors)} images could not be scored: see their 'error' rows in {out / 'results.csv'}",
                   err=True)
        raise SystemExit(1)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("good", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Write the re-calibrated model here (default: replace MODEL, needs --force).")
@click.option("--false-reject", type=float, default=None, help="Target false-reject rate for the image threshold.")
@click.option("--threshold", type=float, default=None, help="A fixed image threshold instead of a target rate.")
@click.option("--category", default=None,
              help="A model with several learned categories (fit --continue): the one GOOD belongs to.")
@device_options
@max_pixels_option
@sign_key_option
@quiet_option
@force_option
@friendly
def calibrate(model: Path, good: tuple[Path, ...], out: Path | None, false_reject: float | None,
              threshold: float | None, category: str | None, max_pixels: int, sign_key: str | None, quiet: bool,
              force: bool) -> None:
    """Re-calibrate MODEL's thresholds on new GOOD images (files or folders), without refitting.

    The images must not be among those the model was fitted on. Reports how far their scores moved
    from the stored ones.
    """
    from ..api import Detector
    from ..atomic import check_writable

    target = out or model
    check_writable(target, force)
    files = expand(good)
    det = Detector.load(model, progress=not quiet, sign_key=sign_key)
    if false_reject is not None:
        det.config.calibration.false_reject_rate = false_reject
    t0 = time.perf_counter()
    if det.learned and threshold is not None:
        raise CostfilterError("--threshold applies to a model of one category; this one learned several")
    shift = det.calibrate(files, category=category)
    if threshold is not None:
        det.set_operating_point(threshold=threshold)
    if shift:
        click.echo(f"good-image scores moved: median {shift['previous_median']:.4f} → {shift['new_median']:.4f} "
                   f"({shift['median_shift']:+.4f}); KS statistic {shift['ks_statistic']:.3f} "
                   f"(p = {shift['ks_pvalue']:.3g})")
    learned = det.state.learned
    echo_points(learned[det.learned.index(category)].operating_points if learned else det.state.operating_points)
    det.save(target, force=True, sign_key=sign_key)
    click.echo(f"saved {target}")
    record(target.with_name(target.name + ".calibrate-record.json"), "calibrate", det, model=target, inputs=files,
            timings={"calibrate_s": time.perf_counter() - t0}, extra={"score_shift": shift})


COMMANDS = [test, predict, calibrate]
