"""``costfilter info``, ``doctor`` and ``synth-preview``: looking at models, the install and the
synthetic anomalies."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import echo_points, force_option, format_option, friendly, sign_key_option


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@sign_key_option
@friendly
def info(model: Path, sign_key: str | None) -> None:
    """Print what a checkpoint (or an exported .onnx file) holds: method, backbone, data,
    thresholds, signature, versions."""
    from ..card import model_card
    from ..loading import is_onnx, open_model

    det = open_model(model, progress=False, sign_key=sign_key)
    click.echo("\n".join(model_card(model, det, onnx=is_onnx(model))))
    learned = getattr(det.state, "learned", [])
    for category in learned:  # each learned category has its own operating points
        click.echo(f"\n{category.name}:")
        echo_points(category.operating_points)
    if det.state.operating_points and not learned:
        echo_points(det.state.operating_points)


@click.command()
@friendly
def doctor() -> None:
    """Offline self-test: backbone weights, a tiny fit → predict, speed, optional extras."""
    from ..doctor import run_doctor

    if not run_doctor(click.echo):
        sys.exit(1)


@click.command("synth-preview")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="PNG file to write.")
@format_option
@click.option("--textures", type=click.Path(path_type=Path), default=None, help="Folder of texture images.")
@click.option("--foreground", type=float, default=None,
              help="Objects on a plain background: anomalies only where pixels differ from the border colour by more.")
@click.option("--n", "count", type=int, default=12, show_default=True, help="Samples to show.")
@click.option("--size", type=int, default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@force_option
@friendly
def synth_preview(data: Path, out: Path, fmt: str, textures: Path | None, foreground: float | None, count: int,
                  size: int, seed: int, force: bool) -> None:
    """Write a grid PNG of synthetic anomalies made from DATA's normal training images."""
    from ..atomic import check_writable
    from ..synth.preview import preview_grid

    check_writable(out, force)
    preview_grid(data, fmt, out, textures=textures, count=count, size=size, seed=seed, foreground=foreground)
    click.echo(f"wrote {out}")


COMMANDS = [info, doctor, synth_preview]
