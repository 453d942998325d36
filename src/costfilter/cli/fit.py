"""``costfilter fit``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import click

from ..card import SOURCES
from ..errors import CostfilterError
from ..names import BACKBONES, COSTFILTER_BASES, METHODS
from .common import (
    device_options,
    echo_points,
    force_option,
    format_option,
    friendly,
    quiet_option,
    record,
    sign_key_option,
    tile_options,
)
from .distributed import fit_per_category, per_category_options

#: methods that are fitted (zero-shot needs no model)
FITTED = tuple(m for m in METHODS if m != "zeroshot")


def _layers(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        layers = tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: whole numbers separated by commas, e.g. 3,5") from None
    if not layers:
        raise click.BadParameter("give at least one layer")
    return layers


def _auto_or(convert: Any, what: str) -> Any:
    """A click callback: ``'auto'``, or the value as ``convert`` reads it (else a usage error)."""
    def parse(_ctx: Any, _param: Any, value: str | None) -> Any:
        if value is None or value == "auto":
            return value
        try:
            return convert(value)
        except ValueError:
            raise click.BadParameter(f"'auto' or {what}, got {value!r}") from None
    return parse


@click.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Checkpoint file to write.")
@format_option
@click.option("--category", "-c", "categories", multiple=True, help="Category to fit on (repeat for several; default all).")
@click.option("--method", type=click.Choice(FITTED), default=None,
              help="memory (default): memory bank; costfilter: CostFilter-AD over a base; "
                   "dfm: differentiable matching, trained end to end.")
@click.option("--base", type=click.Choice(COSTFILTER_BASES), default=None,
              help="CostFilter-AD's base detector (default memory).")
@click.option("--steps", type=int, default=None, help="Training steps of a trained method (costfilter, dfm).")
@click.option("--time-budget", type=float, default=None, help="Stop training after this many seconds.")
@click.option("--init-filter", type=click.Path(path_type=Path), default=None,
              help="CostFilter-AD checkpoint whose filter starts the training (transfer; --steps 0: use it as is).")
@click.option("--textures", type=click.Path(path_type=Path), default=None,
              help="Folder of texture images (e.g. DTD) for synthetic anomalies (default: offline textures).")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Training-state file: saved during training, resumed from if it exists.")
@click.option("--backbone", default=None,
              help=f"{', '.join(BACKBONES)}, timm:<model>, or hf:FOLDER (a local Hugging Face DINO / DINOv2 / DINOv3 / "
                   f"CLIP ViT with .safetensors weights; default {BACKBONES[0]}).")
@click.option("--layers", default=None, callback=lambda ctx, p, v: _layers(v),
              help="Comma-separated stages (EfficientNet) or block numbers (ViT, 1 = first block) to tap, e.g. 8,9,10,11.")
@click.option("--layer-groups", type=click.IntRange(min=1), default=None,
              help="ViT: average the tapped blocks in this many consecutive groups (the reference fuses 8 into 2).")
@click.option("--weights", type=click.Path(path_type=Path), default=None, help="Local weights file for the backbone.")
@click.option("--allow-partial-weights", is_flag=True, default=None,
              help="Accept a weights file that leaves some backbone weights out (they stay random, seeded; warned). "
                   "Without it such a file is refused.")
@click.option("--image-size", callback=_auto_or(int, "a whole number of pixels"), default=None,
              help="Square input size (default 256; a multiple of 32, or of the ViT's patch size), or 'auto': "
                   "the best of 256-512 on held-out good images with synthetic anomalies, among the sizes fast "
                   "enough (docs/image-size.md).")
@click.option("--bank-size", type=int, default=None, help="Rows in the memory bank (default 4096; every patch when fewer).")
@click.option("--coreset-ratio", type=float, default=None,
              help="Instead of --bank-size: keep this fraction of the patches (PatchCore's coreset ratio).")
@click.option("--sampler", type=click.Choice(["greedy", "random"]), default=None)
@click.option("--false-reject", type=float, default=None,
              help="Target rate of good parts rejected, on the calibration good images (default 0.01).")
@click.option("--review-band", type=float, default=None,
              help="Also mark 'review' above the threshold for this larger false-reject rate.")
@click.option("--contamination", default=None, callback=_auto_or(float, "a fraction"),
              help="Training images that look defective (leave-one-out score an outlier) are always listed; "
                   "'auto': also leave them out of the fit; a fraction f: leave out the f of images scoring "
                   "highest; 0 (default): keep them all.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="YAML/JSON config file.")
@click.option("--preset", default=None,
              help="A method's published settings (costfilter: reference; see docs/presets.md); options given "
                   "beside it win.")
@tile_options
@click.option("--seed", type=int, default=None)
@click.option("--shots", type=click.IntRange(min=2), default=None,
              help="Few-shot: fit on this many normal images per category, drawn with --seed (default: all).")
@click.option("--continue", "continue_from", type=click.Path(path_type=Path), default=None,
              help="Add DATA's category to this fitted model (memory or dfm); earlier categories stay as they are.")
@click.option("--name", default=None, help="With --continue: the new category's name (default: DATA's category names).")
@per_category_options
@device_options
@sign_key_option
@quiet_option
@force_option
@friendly
def fit(data: Path, out: Path, fmt: str, categories: tuple[str, ...], method: str | None, base: str | None,
        steps: int | None, time_budget: float | None, init_filter: Path | None, textures: Path | None,
        resume: Path | None, backbone: str | None, layers: tuple[int, ...] | None, layer_groups: int | None,
        weights: Path | None, allow_partial_weights: bool | None, image_size: int | str | None, bank_size: int | None,
        coreset_ratio: float | None, sampler: str | None, false_reject: float | None, review_band: float | None,
        contamination: str | float | None, config_file: Path | None, preset: str | None, tile: int | None, overlap: int | None,
        seed: int | None, shots: int | None, continue_from: Path | None, name: str | None, per_category: bool,
        engine: str, ray_address: str | None, cpus_per_task: float, task_memory: float | None, sign_key: str | None,
        quiet: bool, force: bool) -> None:
    """Fit a detector on the normal training images of DATA and save it to --out.

    With --per-category, --out is a folder: one model per category (OUT/<category>.ckpt) and a
    summary table, fitted one after another, or in parallel with --engine ray.

    With --continue MODEL, DATA's normal images are added to MODEL as a new category and the
    result is saved to --out: earlier categories keep their bank rows and thresholds, and each
    image is later scored as the category it is nearest to."""
    from ..api import Detector
    from ..atomic import check_writable
    from ..card import chosen_text
    from ..config import DetectorConfig

    if continue_from is not None:
        return _continue(continue_from, data, fmt, categories, out, name=name, steps=steps, time_budget=time_budget,
                         false_reject=false_reject, sign_key=sign_key, quiet=quiet, force=force,
                         refused={"--resume": resume, "--method": method, "--base": base, "--init-filter": init_filter,
                                  "--textures": textures, "--backbone": backbone, "--weights": weights,
                                  "--allow-partial-weights": allow_partial_weights,
                                  "--layers": layers, "--layer-groups": layer_groups,
                                  "--image-size": image_size, "--bank-size": bank_size,
                                  "--coreset-ratio": coreset_ratio, "--sampler": sampler,
                                  "--review-band": review_band, "--config": config_file, "--preset": preset,
                                  "--tile": tile,
                                  "--overlap": overlap, "--seed": seed, "--shots": shots,
                                  "--per-category": per_category or None,
                                  "--contamination": contamination})
    if name is not None:
        raise CostfilterError("--name names the category that --continue adds")
    if not per_category:
        if engine != "local":
            raise CostfilterError("--engine ray fits several models at once: add --per-category")
        check_writable(out, force)  # fail before minutes of fitting, not after
        check_writable(out.with_name(out.name + ".fit-record.json"), force)
        if flagged_dir(out).exists() and not force:
            raise CostfilterError(f"{flagged_dir(out)}: already exists (use --force to overwrite)")
    cfg = DetectorConfig.from_file(config_file) if config_file else DetectorConfig()
    if method is not None:
        cfg.method = method
    if preset is not None:
        from ..presets import apply_preset

        apply_preset(cfg, preset)
    training = cfg.dfm.training if cfg.method == "dfm" else cfg.costfilter.training
    for value, obj, attr in [
        (backbone, cfg.features, "backbone"), (str(weights) if weights else None, cfg.features, "weights"),
        (allow_partial_weights, cfg.features, "allow_partial_weights"),
        (layers, cfg.features, "layers"), (layer_groups, cfg.features, "layer_groups"),
        (image_size if image_size != "auto" else None, cfg.features, "image_size"), (bank_size, cfg.memory, "bank_size"),
        (coreset_ratio, cfg.memory, "coreset_ratio"), (sampler, cfg.memory, "sampler"),
        (false_reject, cfg.calibration, "false_reject_rate"), (review_band, cfg.calibration, "review_false_reject_rate"),
        (seed, cfg, "seed"), (shots, cfg, "shots"), (base, cfg.costfilter, "base"), (steps, training, "steps"),
        (time_budget, training, "time_budget_s"), (str(textures) if textures else None, cfg.synthesis, "texture_dir"),
        (str(init_filter) if init_filter else None, cfg.costfilter, "init_filter"),
        (tile, cfg.tiling, "size"), (overlap, cfg.tiling, "overlap"),
        (contamination, cfg.screening, "contamination"),
    ]:
        if value is not None:
            setattr(obj, attr, value)
    from ..config_rules import hf_defaults
    from ..presets import check_preset

    chosen_elsewhere = config_file is not None or preset is not None  # their values stand as given
    for note in hf_defaults(cfg.features, layers_given=layers is not None or chosen_elsewhere,
                            size_given=image_size is not None or chosen_elsewhere):
        click.echo(note, err=True)
    check_preset(cfg)
    cfg.validate()
    if image_size == "auto" and (per_category or resume is not None):
        raise CostfilterError("--image-size auto fits one model per size it tries; it does not combine with "
                              + ("--per-category" if per_category else "--resume"))
    if per_category:
        if resume is not None:
            raise CostfilterError("--resume keeps one training's state; it does not apply to --per-category")
        return fit_per_category(cfg, data, fmt, categories, out, engine=engine, address=ray_address,
                                cpus_per_task=cpus_per_task, memory_gb=task_memory, sign_key=sign_key, quiet=quiet,
                                force=force)
    if image_size == "auto":
        from ..data import load_dataset
        from ..sizing import SizeChoice, fit_auto_size

        det = fit_auto_size(cfg, load_dataset(data, fmt, categories or None), progress=not quiet)
        assert det.state.image_size_choice is not None
        click.echo(f"--image-size auto chose {det.config.features.image_size} px (held-out good images with "
                   "synthetic anomalies):\n" + SizeChoice.from_dict(det.state.image_size_choice).table())
    else:
        det = Detector(cfg, progress=not quiet).fit(data, fmt, categories or None, resume=resume)
    digest = det.save(out, force=force, sign_key=sign_key)
    t, s = det.require_fitted(), det.state
    click.echo(f"fitted {cfg.method} on {s.n_train_images} normal images ({', '.join(s.categories)}); "
               + (f"bank {s.bank_size} patches; " if s.bank_size is not None else "")
               + f"{s.timings['fit_total_s']:.1f} s; thresholds from {t.n_calibration} good images ({SOURCES[t.source]})")
    if s.training is not None:
        tr, best = s.training, s.training.best()
        chosen = chosen_text(tr.chosen)
        click.echo(f"training: {tr.steps} steps ({tr.stopped_by}), best validation step {tr.best_step} "
                   f"(synthetic anomalies on held-out good images: I-AUROC {best.get('image_auroc', float('nan')):.3f}, "
                   f"P-AP {best.get('pixel_ap', float('nan')):.3f})" + (f"; {chosen}" if chosen else ""))
    echo_points(s.operating_points)
    click.echo(f"pixel threshold {t.pixel:.4f}; saved {out} (sha256 {digest[:12]}…)")
    screening = _report_screening(det, out)
    record(out.with_name(out.name + ".fit-record.json"), "fit", det, model=out, digest=s.training_data,
           extra={"screening": screening})


def flagged_dir(out: Path) -> Path:
    """Where ``fit`` draws the training images it flagged: ``<out>.flagged/``."""
    return out.with_name(out.name + ".flagged")


def _report_screening(det: Any, out: Path) -> dict[str, Any] | None:
    """Print the flagged training images and draw each (overlay and mask) into ``<out>.flagged/``."""
    from ..result_files import write_predictions
    from ..screening import Screening, screening_table

    state = det.state.screening
    if state is None:
        return None
    found = Screening.from_dict(state)
    click.echo(screening_table(found))
    if found.flagged:
        folder = flagged_dir(out)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        write_predictions(det.flagged_predictions(), folder, det.require_fitted().pixel,
                          det.config.calibration.min_region_area)
        click.echo(f"pictures of the flagged images (scored without their own bank rows) in {folder}")
    return state


def _continue(model: Path, data: Path, fmt: str, categories: tuple[str, ...], out: Path, *, name: str | None,
              steps: int | None, time_budget: float | None, false_reject: float | None, sign_key: str | None,
              quiet: bool, force: bool, refused: dict[str, object]) -> None:
    """``fit --continue``: the model's own config, with only how long to train and the
    false-reject target open to change."""
    from ..api import Detector
    from ..atomic import check_writable

    given = [flag for flag, value in refused.items() if value is not None]
    if given:
        raise CostfilterError(f"{', '.join(given)}: --continue keeps the model's own settings (and starts "
                              "its training afresh)")
    check_writable(out, force)
    check_writable(out.with_name(out.name + ".fit-record.json"), force)
    det = Detector.load(model, progress=not quiet, sign_key=sign_key)
    training = det.config.dfm.training if det.config.method == "dfm" else det.config.costfilter.training
    for value, obj, attr in [(steps, training, "steps"), (time_budget, training, "time_budget_s"),
                             (false_reject, det.config.calibration, "false_reject_rate")]:
        if value is not None:
            setattr(obj, attr, value)
    det.config.validate()
    det.extend(data, fmt, categories or None, name=name)
    digest = det.save(out, force=force, sign_key=sign_key)
    new = det.state.learned[-1]
    t = new.thresholds
    click.echo(f"added {new.name!r} to {model} ({new.n_train_images} normal images, {new.bank_rows} bank rows); "
               f"thresholds from {t.n_calibration} good images ({SOURCES[t.source]})")
    if new.training is not None:
        click.echo(f"training: {new.training.steps} steps ({new.training.stopped_by}), "
                   f"best validation step {new.training.best_step}")
    echo_points(new.operating_points)
    click.echo(f"categories, in the order learned: {', '.join(det.learned)}; saved {out} (sha256 {digest[:12]}…)")
    record(out.with_name(out.name + ".fit-record.json"), "fit --continue", det, model=out, digest=new.training_data,
           extra={"continued_from": str(model), "category": new.name})


COMMANDS = [fit]
