"""The ``--engine ray`` side of ``predict`` and ``fit``: options and the two runs.

The local paths stay in ``inspect.py`` and ``fit.py``; everything here needs the ``[ray]`` extra,
imported only when ``--engine ray`` is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import CostfilterError
from .common import options

engine_option = click.option(
    "--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
    help="ray: run on a Ray cluster (pip install 'costfilter[ray]'); a local one is started unless --ray-address.")
ray_address_option = click.option(
    "--ray-address", default=None, metavar="ADDR",
    help="Ray cluster to join (e.g. 10.0.0.5:6379, or 'auto'); default: start a local one.")

#: ``predict --engine ray``'s options
ray_predict_options = options(
    engine_option, ray_address_option,
    click.option("--actors", type=click.IntRange(min=1), default=2, show_default=True,
                 help="Ray: scoring actors, each holding the model once."),
    click.option("--batch-size", type=click.IntRange(min=1), default=None,
                 help="Ray: images per model call (default: the model's own batch size, as the local engine)."),
    click.option("--cpus-per-actor", type=float, default=1.0, show_default=True,
                 help="Ray: CPUs reserved per actor (also its torch threads)."),
    click.option("--gpus-per-actor", type=float, default=0.0, show_default=True, help="Ray: GPUs reserved per actor."),
    click.option("--save-maps", is_flag=True,
                 help="Ray: also write each image's overlay and mask PNGs (by the actors, into --out)."),
)


def predict_ray(model: str, sources: tuple[str, ...], out: Path, *, address: str | None, actors: int,
                batch_size: int | None, cpus_per_actor: float, gpus_per_actor: float, save_maps: bool,
                sign_key: str | None, max_pixels: int, quiet: bool, force: bool) -> None:
    """Score SOURCES with MODEL on Ray into ``out/results.parquet`` and print a summary."""
    from ..distributed.inference import predict_on_ray, results_digest
    from ..distributed.session import ray_session
    from ..distributed.store import RECORD
    from ..loading import open_model
    from ..provenance import file_sha256, write_record
    from ..sources import expand_sources

    if model == "zeroshot":
        raise CostfilterError("--engine ray scores with a fitted model; zero-shot batches are their own references")
    det = open_model(model, progress=False, sign_key=sign_key)  # a bad model fails here, before any cluster
    paths = expand_sources(sources, exclude=out)  # never its own pictures, from an earlier run or this one
    batch_size = batch_size or det.config.batch_size
    try:
        with ray_session(address):
            import ray

            run = predict_on_ray(model, paths, out, model_sha256=file_sha256(model), actors=actors,
                                 batch_size=batch_size, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor,
                                 save_maps=save_maps, sign_key=sign_key, max_pixels=max_pixels, force=force,
                                 progress=not quiet)
            cluster = {"address": address or "local", "nodes": len(ray.nodes()), "cpus": ray.cluster_resources().get("CPU"),
                       "actors": actors, "batch_size": batch_size, "cpus_per_actor": cpus_per_actor,
                       "gpus_per_actor": gpus_per_actor}
    except KeyboardInterrupt:
        # The session is over, so the actors are gone: their cut-short temp files can go.
        from ..atomic import remove_stale_temps

        remove_stale_temps(out, whole_folder=True)
        click.echo(f"interrupted; the results received so far are kept in {out}: run the same command to score "
                   "the rest (pictures of images that were in flight are drawn again)", err=True)
        raise SystemExit(130) from None
    write_record(out / RECORD, "predict", config=det.config.to_dict(), model=Path(model),
                 digest=results_digest(run.table), timings={"predict_s": run.seconds, "first_rows_s": run.first_rows_s,
                                                               "driver_s": run.driver_s, "driver_cpu_s": run.driver_cpu_s},
                 extra={"engine": "ray", "ray": cluster, "decisions": run.decisions,
                        "this_run": {"scored": run.scored, "skipped": run.skipped, "errors": run.errors}})
    decisions = ", ".join(f"{n} {d}" for d, n in sorted(run.decisions.items()))
    click.echo(f"{len(paths)} images: {run.scored} scored, {run.skipped} already in the results, {run.errors} errors "
               f"({run.seconds:.1f} s); {out / 'results.parquet'} holds {run.table.num_rows} rows: {decisions}")
    if run.errors:
        click.echo("images that failed are rows with an 'error' field; a rerun retries them", err=True)
        raise SystemExit(1)


#: ``fit --per-category``'s options
per_category_options = options(
    click.option("--per-category", is_flag=True,
                 help="One model per category: --out is a folder of <category>.ckpt files and a summary table."),
    engine_option, ray_address_option,
    click.option("--cpus-per-task", type=float, default=1.0, show_default=True,
                 help="Ray: CPUs reserved per category's fit (also its torch threads)."),
    click.option("--task-memory", type=float, default=None, metavar="GB",
                 help="Ray: memory reserved per category's fit; Ray runs no more fits on a node than this allows."),
)


def fit_per_category(cfg: Any, data: Path, fmt: str, categories: tuple[str, ...], out: Path, *, engine: str,
                     address: str | None, cpus_per_task: float, memory_gb: float | None, sign_key: str | None,
                     quiet: bool, force: bool) -> None:
    """Fit one model per category of DATA into the folder ``out``; print and save the summary."""
    import time

    from ..data import categories_of, load_dataset
    from ..distributed.fitting import SUMMARY_COLUMNS, fit_local, write_summary
    from ..provenance import environment
    from ..tables import format_table

    if out.exists() and not out.is_dir():
        raise CostfilterError(f"{out}: exists and is not a folder (--per-category writes one model per category)")
    cats = list(categories) or categories_of(load_dataset(data, fmt))
    if not force:
        for name in [f"{c}.ckpt" for c in cats] + ["summary.csv", "summary.json"]:
            if (out / name).exists():
                raise CostfilterError(f"{out / name}: already exists (use --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    cfg.validate()
    kw = {"sign_key": sign_key, "force": force}

    def done(row: dict[str, Any]) -> None:
        if not quiet:
            what = f"error: {row['error']}" if row.get("error") else f"{row['images']} images, {row['fit_s']:.1f} s"
            click.echo(f"  {row['category']}: {what}", err=True)

    t0 = time.perf_counter()
    if engine == "ray":
        from ..distributed.fitting import fit_on_ray
        from ..distributed.session import ray_session

        with ray_session(address):
            rows = fit_on_ray(cfg.to_dict(), str(data), fmt, cats, str(out), cpus_per_task=cpus_per_task,
                              memory_gb=memory_gb, done=done, **kw)
    else:
        rows = fit_local(cfg.to_dict(), str(data), fmt, cats, str(out), done=done, **kw)
    seconds = time.perf_counter() - t0
    write_summary(out, rows, {"data": str(data), "format": fmt, "engine": engine, "seconds": round(seconds, 2),
                              "config": cfg.to_dict(), "environment": environment()})
    shown = [c for c in SUMMARY_COLUMNS if c not in ("sha256", "checkpoint")]
    click.echo(format_table(shown, [[r.get(c) for c in shown] for r in rows]))
    failed = [r["category"] for r in rows if r.get("error")]
    click.echo(f"{len(rows) - len(failed)} of {len(rows)} categories fitted in {seconds:.1f} s ({engine}); "
               f"models and summary.csv in {out}")
    if failed:
        raise CostfilterError(f"{len(failed)} categories failed: {', '.join(failed)} (see summary.csv)")
