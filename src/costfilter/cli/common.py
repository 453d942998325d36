"""What the commands share: one-line errors, option groups, the run record, the operating points."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import CostfilterError
from ..names import FORMATS, RUNTIMES


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into one line on stderr and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CostfilterError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, as other command-line tools do. Point
            # stdout at /dev/null so that the interpreter's last flush finds no broken pipe either,
            # and exit as a process killed by SIGPIPE would (128 + 13).
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except OSError as exc:  # disk full, permissions, a folder gone: one line naming the file
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"error: {where}{exc.strerror or exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing half-written was left behind", err=True)
            sys.exit(130)

    return wrapper


def options(*opts: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Several click options as one decorator, in the order given."""
    def apply(fn: Any) -> Any:
        for option in reversed(opts):
            fn = option(fn)
        return fn

    return apply


quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
sign_key_option = click.option(
    "--sign-key", default=None, metavar="KEY",
    help="HMAC key: sign the model files written, refuse those read unless signed with it "
         "(default: the COSTFILTER_SIGN_KEY environment variable; prefer it, a flag shows in ps).")
force_option = click.option("--force", is_flag=True, help="Overwrite existing outputs.")


def _set_max_pixels(ctx: click.Context, param: click.Parameter, value: int) -> int:
    from ..data.imageio import set_max_pixels

    set_max_pixels(value)
    return value


max_pixels_option = click.option(
    "--max-pixels", type=click.IntRange(min=1), default=40_000_000, show_default=True, callback=_set_max_pixels,
    expose_value=True, help="Largest image decoded (width × height); a larger one is refused before decoding.")


def _request_compute(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        from ..compute import request

        request(**{str(param.name): value})


device_options = options(
    click.option("--device", default=None, metavar="auto|cpu|cuda[:N]|mps", expose_value=False,
                 callback=_request_compute,
                 help="Where the backbone, search and training run [default: COSTFILTER_DEVICE, else cpu]."),
    click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None, expose_value=False,
                 callback=_request_compute,
                 help="Backbone and training precision (autocast); search stays float32 "
                      "[default: COSTFILTER_PRECISION, else fp32]."),
)


format_option = click.option("--format", "fmt", type=click.Choice(FORMATS), default="mvtec", show_default=True)
tile_options = options(
    click.option("--tile", type=int, default=None, help="Score large images in tiles of this many source pixels."),
    click.option("--overlap", type=int, default=None, help="Pixels shared by neighbouring tiles (with --tile)."),
)
clip_options = options(
    click.option("--clip", "clip_model", type=click.Path(path_type=Path), default=None,
                 help="Zero-shot: local CLIP folder (Hugging Face format, safetensors) whose text prompts keep "
                      "damaged-looking patches out of the references."),
    click.option("--clip-object", default="object", show_default=True,
                 help="The object named in the CLIP prompts ('a photo of a damaged <object>')."),
    click.option("--backbone", "zs_backbone", default=None,
                 help="Zero-shot: the backbone (e.g. hf:FOLDER, a local CLIP or DINOv2 folder) instead of the "
                      "default."),
    click.option("--preset", "zs_preset", default=None,
                 help="Zero-shot: published settings (reference: MuSc's; docs/presets.md); needs --backbone "
                      "hf:FOLDER."),
)


def echo_points(points: list[Any]) -> None:
    """The operating-point table, with a warning where the calibration images are too few."""
    from ..card import points_table

    click.echo(points_table(points))


def record(path: Path, command: str, det: Any, **kw: Any) -> None:
    """Write the command's JSON run record (config, versions, model and input digests, timings)."""
    from ..provenance import write_record

    write_record(path, command, config=det.config.to_dict(), **kw)


def expand(paths: tuple[Path | str, ...], exclude: Path | None = None) -> list[Path]:
    """Image files from files, folders (recursively), glob patterns and path lists, as
    ``--engine ray`` takes them (:func:`~costfilter.sources.expand_sources`), each file once;
    nothing under ``exclude`` (the run's own output folder)."""
    from ..sources import expand_sources, is_uri

    uris = [str(p) for p in paths if is_uri(str(p))]
    if uris:
        raise CostfilterError(f"{uris[0]}: URIs are read by --engine ray only; the local engine reads local files")
    return [Path(p) for p in expand_sources([str(p) for p in paths], exclude=exclude)]


runtime_option = click.option(
    "--runtime", type=click.Choice(RUNTIMES), default=None,
    help="Run an exported .onnx model with onnxruntime (default) or OpenVINO (pip install 'costfilter[openvino]').")


def detector(model_or_method: Path | str, quiet: bool, clip_model: Path | None = None,
             clip_object: str = "object", sign_key: str | None = None, runtime: str | None = None, *,
             backbone: str | None = None, preset: str | None = None) -> Any:
    """Open a checkpoint or an exported ``.onnx`` model, or build a zero-shot detector (which
    needs none; ``backbone`` and ``preset`` configure it)."""
    for value, flag in ((clip_model, "--clip"), (backbone, "--backbone"), (preset, "--preset")):
        if value is not None and model_or_method != "zeroshot":
            raise CostfilterError(f"{flag} applies to --method zeroshot only (a model keeps its own settings)")
    if model_or_method == "zeroshot":
        from ..api import Detector
        from ..config import DetectorConfig
        from ..presets import apply_preset, check_preset

        cfg = DetectorConfig(method="zeroshot")
        if preset is not None:
            apply_preset(cfg, preset)
        if backbone is not None:
            cfg.features.backbone = backbone
        check_preset(cfg)
        cfg.zeroshot.clip_model = str(clip_model) if clip_model else None
        cfg.zeroshot.clip_object = clip_object
        return Detector(cfg, progress=not quiet)
    from ..loading import open_model

    return open_model(model_or_method, progress=not quiet, sign_key=sign_key, runtime=runtime)
