"""``costfilter`` command line: thin wrappers that parse options, call :mod:`costfilter.api`, print."""

from __future__ import annotations

import functools
import json
import sys
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
@click.option("--backbone", default=None, help="efficientnet_lite0 (default), efficientnet_lite2, or timm:<model>.")
@click.option("--weights", type=click.Path(path_type=Path), default=None, help="Local weights file for the backbone.")
@click.option("--image-size", type=int, default=None, help="Square input size (multiple of 32; default 256).")
@click.option("--coreset-ratio", type=float, default=None, help="Fraction of patches kept in the bank (default 0.001).")
@click.option("--sampler", type=click.Choice(["greedy", "random"]), default=None)
@click.option("--false-alarm", type=float, default=None, help="Target false-alarm rate on good images (default 0.01).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="YAML/JSON config file.")
@click.option("--seed", type=int, default=None)
@quiet_option
@force_option
@_friendly
def fit(data: Path, out: Path, fmt: str, categories: tuple[str, ...], backbone: str | None, weights: Path | None,
        image_size: int | None, coreset_ratio: float | None, sampler: str | None, false_alarm: float | None,
        config_file: Path | None, seed: int | None, quiet: bool, force: bool) -> None:
    """Fit a detector on the normal training images of DATA and save it to --out."""
    from .api import Detector
    from .atomic import check_writable
    from .config import DetectorConfig

    check_writable(out, force)  # fail before minutes of fitting, not after
    cfg = DetectorConfig.from_file(config_file) if config_file else DetectorConfig()
    for value, obj, attr in [
        (backbone, cfg.features, "backbone"), (str(weights) if weights else None, cfg.features, "weights"),
        (image_size, cfg.features, "image_size"), (coreset_ratio, cfg.memory, "coreset_ratio"),
        (sampler, cfg.memory, "sampler"), (false_alarm, cfg.calibration, "false_alarm_rate"), (seed, cfg, "seed"),
    ]:
        if value is not None:
            setattr(obj, attr, value)
    det = Detector(cfg, progress=not quiet).fit(data, fmt, categories or None)
    digest = det.save(out, force=force)
    t = det.thresholds
    assert t is not None
    click.echo(f"fitted on {det.state['n_train_images']} normal images "
               f"({', '.join(det.state['categories'])}); bank {det.state['bank_size']} patches; "
               f"{det.state['timings']['fit_total_s']:.1f} s")
    click.echo(f"image threshold {t.image:.4f} (false alarms on {t.n_calibration} held-out good images: "
               f"{t.image_false_alarm:.1%}); pixel threshold {t.pixel:.4f}")
    click.echo(f"saved {out} (sha256 {digest[:12]}…)")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="mvtec", show_default=True)
@click.option("--category", "-c", "categories", multiple=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write metrics as JSON.")
@click.option("--eval-size", type=int, default=None, help="Resolution of pixel metrics (default: model size).")
@click.option("--mask-threshold", type=int, default=0, show_default=True, help="Mask pixel is defect if value > this.")
@quiet_option
@force_option
@_friendly
def test(model: Path, data: Path, fmt: str, categories: tuple[str, ...], json_out: Path | None,
         eval_size: int | None, mask_threshold: int, quiet: bool, force: bool) -> None:
    """Evaluate MODEL on the test split of DATA: per-category table and mean."""
    from .api import Detector
    from .atomic import check_writable, write_text
    from .report import environment, metrics_table

    if json_out:
        check_writable(json_out, force)
    det = Detector.load(model, progress=not quiet)
    ev = det.evaluate(data, fmt, categories or None, eval_size=eval_size, mask_threshold=mask_threshold)
    click.echo(metrics_table(ev.per_category, ev.mean))
    click.echo(f"{len(ev.samples)} images in {ev.seconds:.1f} s ({ev.images_per_second:.1f} images/s)")
    if json_out:
        payload = {"model": str(model), "model_sha256": det.state.get("sha256"), "data": str(data),
                   "per_category": ev.per_category, "mean": ev.mean, "seconds": ev.seconds,
                   "environment": environment()}
        write_text(json_out, json.dumps(payload, indent=2))


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
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Folder for overlays, masks, tables.")
@quiet_option
@force_option
@_friendly
def predict(model: Path, paths: tuple[Path, ...], out: Path, quiet: bool, force: bool) -> None:
    """Score images (files or folders): decision, heat-map overlay, mask, results.csv/jsonl."""
    from .api import Detector
    from .outputs import prepare_out_dir, write_predictions

    files = _expand(paths)
    det = Detector.load(model, progress=not quiet)
    prepare_out_dir(out, force)
    preds = det.predict(files)
    t = det.thresholds
    assert t is not None
    write_predictions(preds, out, t.image, t.pixel)
    n_bad = sum(p.decision == "anomalous" for p in preds)
    click.echo(f"{len(preds)} images: {n_bad} anomalous, {len(preds) - n_bad} normal; results in {out}")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@_friendly
def info(model: Path) -> None:
    """Print what a checkpoint holds: method, backbone, data, thresholds, versions."""
    from .checkpoint import load_checkpoint

    _, config, state, digest = load_checkpoint(model)
    t = state.get("thresholds", {})
    lines = [
        f"model        {model}  (sha256 {digest})",
        f"method       {config['method']}  backbone {config['features']['backbone']} layers {config['features']['layers']}"
        f"  size {config['features']['image_size']}",
        f"trained on   {state.get('n_train_images')} normal images; categories: {', '.join(state.get('categories', []))}",
        f"bank         {state.get('bank_size')} patches (coreset ratio {config['memory']['coreset_ratio']}, "
        f"{config['memory']['sampler']})",
        f"thresholds   image {t.get('image', float('nan')):.4f}, pixel {t.get('pixel', float('nan')):.4f} "
        f"(from {t.get('n_calibration')} held-out good images)",
        f"created      {state.get('created')}",
    ]
    click.echo("\n".join(lines))


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
