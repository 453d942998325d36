"""``costfilter benchmark …``: reproducible benchmarks that print a table and write JSON."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import CostfilterError
from .common import force_option, friendly, quiet_option


def json_option(name: str) -> Callable[[Any], Any]:
    """``--json``: where a benchmark writes its results (default ``runs/benchmark/NAME.json``)."""
    return click.option("--json", "json_out", type=click.Path(path_type=Path),
                        default=Path(f"runs/benchmark/{name}.json"), show_default=True)


def names(text: str) -> tuple[str, ...]:
    """A comma-separated option as a tuple of its non-empty, stripped items."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


@click.group()
def benchmark() -> None:
    """Reproducible benchmarks that print a table and write JSON."""


@benchmark.command("elpv")
@json_option("elpv")
@click.option("--heatmaps", type=click.Path(path_type=Path), default=None, help="Folder for example heat-maps.")
@click.option("--coreset-ratio", type=float, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@quiet_option
@force_option
@friendly
def benchmark_elpv(json_out: Path, heatmaps: Path | None, coreset_ratio: float | None, seed: int,
                   quiet: bool, force: bool) -> None:
    """ELPV solar cells: fit on 70 % of functional cells, test on the rest vs defective cells."""
    from ..bench.elpv import run_elpv

    run_elpv(json_out, heatmaps=heatmaps, coreset_ratio=coreset_ratio, seed=seed, progress=not quiet, force=force)


@benchmark.command("methods")
@json_option("methods")
@click.option("--dfm-budget", type=float, default=150.0, show_default=True, help="DFM training seconds.")
@click.option("--seed", type=int, default=0, show_default=True)
@force_option
@friendly
def benchmark_methods(json_out: Path, dfm_budget: float, seed: int, force: bool) -> None:
    """ELPV with every method side by side: memory bank, DFM, zero-shot."""
    from ..bench.methods import run_methods

    run_methods(json_out, dfm_budget_s=dfm_budget, seed=seed, force=force)


@benchmark.command("costfilter")
@click.option("--data", "root", type=click.Path(path_type=Path), default=Path("../shared/data"), show_default=True)
@json_option("costfilter")
@click.option("--figures", type=click.Path(path_type=Path), default=Path("runs/benchmark"), show_default=True)
@click.option("--budget", type=float, default=300.0, show_default=True, help="Training seconds per masked category and base.")
@click.option("--elpv-budget", type=float, default=600.0, show_default=True, help="Training seconds on ELPV per base.")
@click.option("--bases", default="memory,reconstruction", show_default=True, help="Comma-separated bases to run.")
@click.option("--ablation", default="", help="Comma-separated masked categories to run the ablation variants on.")
@click.option("--ablation-budget", type=float, default=120.0, show_default=True, help="Training seconds per ablation fit.")
@click.option("--curves", default="", help="Comma-separated data sets whose memory-base run records a learning curve.")
@click.option("--no-elpv", is_flag=True, help="Skip ELPV.")
@force_option
@friendly
def benchmark_costfilter(root: Path, json_out: Path, figures: Path, budget: float, elpv_budget: float, bases: str,
                         ablation: str, ablation_budget: float, curves: str, no_elpv: bool, force: bool) -> None:
    """CostFilter-AD vs its base (memory bank, reconstruction) on ELPV and masked categories, with an
    ablation of its design choices and learning curves."""
    from ..bench.costfilter import run_costfilter

    run_costfilter(json_out, figures, masked_root=root, budget_s=budget, elpv_budget_s=elpv_budget, force=force,
                   elpv=not no_elpv, bases=names(bases), ablation=names(ablation), ablation_budget_s=ablation_budget,
                   curves=names(curves))


@benchmark.command("transfer")
@click.option("--data", "root", type=click.Path(path_type=Path), default=Path("../shared/data"), show_default=True)
@json_option("costfilter_transfer")
@click.option("--targets", default="welding,metal_plate,magnetic_tile", show_default=True,
              help="Comma-separated categories to transfer to (each filter trains on the others).")
@click.option("--source-budget", type=float, default=240.0, show_default=True, help="Training seconds per source filter.")
@click.option("--finetune", type=float, default=60.0, show_default=True, help="Fine-tuning seconds on the target.")
@click.option("--no-elpv", is_flag=True, help="Train the source filters on the masked categories only.")
@force_option
@friendly
def benchmark_transfer(root: Path, json_out: Path, targets: str, source_budget: float, finetune: float, no_elpv: bool,
                       force: bool) -> None:
    """CostFilter-AD transfer: a filter trained on other data, applied to a new category as is and fine-tuned."""
    from ..bench.transfer import run_transfer

    run_transfer(json_out, masked_root=root, targets=names(targets),
                 source_budget_s=source_budget, finetune_s=finetune, with_elpv=not no_elpv, force=force)


@benchmark.command("export")
@click.option("--data", "root", type=click.Path(path_type=Path), default=Path("../shared/data"), show_default=True)
@json_option("export")
@click.option("--budget", type=float, default=60.0, show_default=True, help="DFM / CostFilter-AD training seconds.")
@force_option
@friendly
def benchmark_export(root: Path, json_out: Path, budget: float, force: bool) -> None:
    """ONNX export parity (scores, maps, decisions) and latency vs eager on real masked categories."""
    from ..bench.deploy import run_export

    run_export(json_out, root, cf_budget_s=budget, force=force)


@benchmark.command("load")
@click.option("--category", type=click.Path(path_type=Path), default=Path("../shared/data/mpdd/metal_plate"),
              show_default=True, help="MVTec-layout category: fit on its good images, upload its test images.")
@json_option("load_test")
@click.option("--requests", type=int, default=120, show_default=True, help="Requests per client count (bounded).")
@click.option("--clients", type=int, multiple=True, default=(1, 4), show_default=True)
@click.option("--time-limit", type=float, default=120.0, show_default=True, help="Seconds per client count, at most.")
@force_option
@friendly
def benchmark_load(category: Path, json_out: Path, requests: int, clients: tuple[int, ...], time_limit: float,
                   force: bool) -> None:
    """Load test of `costfilter serve` on 127.0.0.1: requests/s and p50/p95 latency of POST /predict."""
    from ..bench.deploy import run_load_test

    run_load_test(json_out, category, requests=requests, concurrency=clients, time_limit_s=time_limit, force=force)


@benchmark.command("zeroshot")
@click.option("--data", "root", type=click.Path(path_type=Path), default=Path("../shared/data"), show_default=True)
@json_option("zeroshot")
@click.option("--variants", default="", help="Comma-separated ablation variants to run (default: all).")
@click.option("--no-elpv", is_flag=True, help="Skip ELPV.")
@click.option("--seed", type=int, default=0, show_default=True)
@force_option
@friendly
def benchmark_zeroshot(root: Path, json_out: Path, variants: str, no_elpv: bool, seed: int, force: bool) -> None:
    """Zero-shot (MuSc's pieces one by one), pool sizes and the share of defective images per pool."""
    from ..bench.zeroshot import VARIANTS, run_zeroshot

    chosen = names(variants)
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise CostfilterError(f"unknown variant {unknown[0]!r}; variants: {', '.join(VARIANTS)}")
    run_zeroshot(json_out, root, elpv=not no_elpv, variants=chosen, seed=seed, force=force)


@benchmark.command("dfm")
@click.option("--data", "root", type=click.Path(path_type=Path), default=Path("../shared/data"), show_default=True)
@json_option("dfm_e2e")
@click.option("--figures", type=click.Path(path_type=Path), default=Path("runs/benchmark"), show_default=True)
@click.option("--budget", type=float, default=150.0, show_default=True, help="DFM training seconds per data set.")
@click.option("--no-elpv", is_flag=True, help="Skip ELPV.")
@force_option
@friendly
def benchmark_dfm(root: Path, json_out: Path, figures: Path, budget: float, no_elpv: bool, force: bool) -> None:
    """DFM with the tapped backbone stages trained vs frozen DFM and the memory bank."""
    from ..bench.dfm import run_dfm

    run_dfm(json_out, figures, root, budget_s=budget, elpv=not no_elpv, force=force)


@benchmark.command("continual")
@click.option("--data", "root", type=click.Path(path_type=Path), default=Path("../shared/data"), show_default=True)
@json_option("continual")
@click.option("--budget", type=float, default=90.0, show_default=True, help="DFM training seconds per task.")
@click.option("--variants", default=None, help="Comma-separated variants (default all).")
@click.option("--seed", type=int, default=0, show_default=True)
@force_option
@friendly
def benchmark_continual(root: Path, json_out: Path, budget: float, variants: str | None, seed: int, force: bool) -> None:
    """Continual learning: ELPV mono, ELPV poly, magnetic_tile, metal_plate, welding added one by one."""
    from ..bench.continual import VARIANTS, run_continual

    chosen = names(variants) if variants else list(VARIANTS)
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise CostfilterError(f"unknown variant {unknown[0]!r}; variants: {', '.join(VARIANTS)}")
    run_continual(json_out, root, budget_s=budget, seed=seed, variants=chosen, force=force)


@benchmark.command("ray")
@click.option("--category", type=click.Path(path_type=Path), default=Path("../shared/data/magnetic_tile/magnetic_tile"),
              show_default=True, help="MVTec-layout category: fit on its good images, score its test images.")
@json_option("ray_scale")
@click.option("--paths", "n_paths", type=int, default=5000, show_default=True,
              help="Test images replicated to this many paths.")
@click.option("--seed", type=int, default=0, show_default=True)
@force_option
@friendly
def benchmark_ray(category: Path, json_out: Path, n_paths: int, seed: int, force: bool) -> None:
    """Ray batch scoring vs local predict on this machine: images/s with 1 and N actors, Ray's overheads."""
    from ..bench.ray_scale import run_ray_scale

    run_ray_scale(json_out, category, n_paths=n_paths, seed=seed, force=force)


@benchmark.command("masked")
@click.option("--data", "root", type=click.Path(path_type=Path), default=Path("../shared/data"), show_default=True,
              help="Root of MVTec-layout categories.")
@json_option("masked")
@click.option("--size", type=int, default=256, show_default=True)
@click.option("--figures", type=click.Path(path_type=Path), default=None, help="Folder for grids and curves.")
@click.option("--methods", default="memory", show_default=True, help="Comma-separated methods to compare.")
@click.option("--no-multi", is_flag=True, help="Skip the multi-class run.")
@click.option("--seed", type=int, default=0, show_default=True)
@quiet_option
@force_option
@friendly
def benchmark_masked(root: Path, json_out: Path, size: int, figures: Path | None, methods: str, no_multi: bool,
                     seed: int, quiet: bool, force: bool) -> None:
    """Pixel-level benchmark on every MVTec-layout category under --data, single- and multi-class."""
    from ..bench.masked import run_masked

    run_masked(root, json_out, size=size, figures=figures, methods=tuple(m.strip() for m in methods.split(",")),
               multi=not no_multi, seed=seed, force=force)


@benchmark.command("robustness")
@click.option("--data", "root", type=click.Path(path_type=Path), default=Path("../shared/data/battery_weld/welding"),
              show_default=True, help="MVTec-layout category to fit the model the cases run against.")
@json_option("robustness")
@click.option("--flips", type=int, default=300, show_default=True, help="Byte flips tried on the exported ONNX file.")
@force_option
@friendly
def benchmark_robustness(root: Path, json_out: Path, flips: int, force: bool) -> None:
    """Hostile inputs against the CLI and the service: what is handled, and at what peak memory."""
    from ..bench.robustness import run_robustness

    run_robustness(json_out, root, flips=flips, force=force)
