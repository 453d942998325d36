"""``costfilter watch``: a station without the web service (hot folders and streams in, MQTT,
HTTP hooks and JSONL files out, through the outbox)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from .common import device_options, friendly, max_pixels_option, sign_key_option


def log_to_stderr() -> None:
    """The station's events (a file failed, a sink down or back) as timestamped lines on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")


@click.command()
@click.argument("station_file", metavar="STATION.yaml", type=click.Path(path_type=Path))
@click.option("--check", is_flag=True, help="Read the file, open the model and the store, print the plan, exit.")
@device_options
@max_pixels_option
@sign_key_option
@friendly
def watch(station_file: Path, check: bool, max_pixels: int, sign_key: str | None) -> None:
    """Run the station STATION.yaml headless until Ctrl-C or SIGTERM: each new image in its hot
    folders and each sampled frame of its streams is inspected, stored in the history and sent to
    every sink; a sink that is down gets its messages, in order, when it returns (also after a
    restart). `costfilter serve --station STATION.yaml` runs the same with the web service."""
    from ..station import Station, load_station

    log_to_stderr()
    cfg = load_station(station_file)
    station = Station(cfg, sign_key=sign_key)
    click.echo(f"station {cfg.station}: model {cfg.model}; history in {cfg.db or cfg.store}")
    for s in station.sources:
        missing = s.kind == "folder" and not Path(s.target).is_dir()
        click.echo(f"  source {s.name} ({s.kind}): {s.target}" + (" (not there now: watched once it is)" if missing else ""))
    for d in station.deliverers:
        click.echo(f"  sink {d.sink.name} ({d.sink.kind}): {d.sink.target}")
    backlog = station.store.backlog()
    if backlog:
        click.echo("  outbox backlog: " + ", ".join(f"{k} {v}" for k, v in sorted(backlog.items())))
    if check:
        return
    station.run_until_signal()
    click.echo(f"station {cfg.station} stopped")


COMMANDS = [watch]
