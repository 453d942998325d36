"""``costfilter benchmark paper``: the papers' per-category table on a dataset, single- and
multi-class, with the protocol stated in its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..names import METHODS
from .common import device_options, force_option, format_option, friendly, quiet_option


@click.group()
def benchmark() -> None:
    """Published-protocol benchmarks."""


@benchmark.command()
@click.option("--data", "roots", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Dataset root (repeat for several; multi-class fits one model on all their categories).")
@format_option
@click.option("--category", "-c", "categories", multiple=True, help="Only these categories (repeat).")
@click.option("--method", type=click.Choice(METHODS), default="memory", show_default=True)
@click.option("--backbone", default=None, help="Backbone (default: the method's; hf:FOLDER for a local ViT).")
@click.option("--preset", default=None, help="A method's published settings (docs/presets.md).")
@click.option("--image-size", type=int, default=None, help="Input size (default: the method's or the preset's).")
@click.option("--setting", type=click.Choice(["single", "multi", "both"]), default="both", show_default=True,
              help="single: a model per category; multi: one model on every category.")
@click.option("--seed", type=int, default=None)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the results as JSON.")
@device_options
@quiet_option
@force_option
@friendly
def paper(roots: tuple[Path, ...], fmt: str, categories: tuple[str, ...], method: str, backbone: str | None,
          preset: str | None, image_size: int | None, setting: str, seed: int | None, json_out: Path | None,
          quiet: bool, force: bool) -> None:
    """Fit and test on each dataset root as the papers report it: I-AUROC, I-AP, I-F1max,
    P-AUROC, P-AP, P-F1max, AUPRO@0.3 and AUPIMO per category, and their mean."""
    from ..atomic import check_writable, write_text
    from ..config import DetectorConfig
    from ..presets import apply_preset, check_preset
    from ..protocol import SETTINGS, paper_tables, run_paper

    if json_out is not None:
        check_writable(json_out, force)
    cfg = DetectorConfig(method=method)
    if preset is not None:
        apply_preset(cfg, preset)
    for value, obj, attr in ((backbone, cfg.features, "backbone"), (image_size, cfg.features, "image_size"),
                             (seed, cfg, "seed")):
        if value is not None:
            setattr(obj, attr, value)
    check_preset(cfg)
    cfg.validate()
    result = run_paper(list(roots), fmt, cfg, settings=SETTINGS if setting == "both" else (setting,),
                       categories=categories or None, progress=not quiet, log=lambda s: click.echo(s, err=True))
    click.echo(paper_tables(result))
    if json_out is not None:
        write_text(json_out, json.dumps(result, indent=2) + "\n")
        click.echo(f"wrote {json_out}")


COMMANDS = [benchmark]
