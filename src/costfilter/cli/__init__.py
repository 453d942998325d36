"""``costfilter`` command line: thin commands that parse options, call the API, print.

Commands live in small modules by what they are for: ``fit``; ``inspect`` (test, predict,
calibrate); ``deploy`` (export, serve); ``station`` (watch); ``tools`` (info, doctor, synth-preview); ``bench`` (benchmark paper);
``distributed`` (the ``--engine ray`` side). The benchmarks are studies outside the package (``python -m
benchmarks.NAME`` in a checkout). Choices come from :mod:`costfilter.names`, so ``--help`` loads
no torch.
"""

from __future__ import annotations

import os

# numpy asks the kernel for huge pages on every large array. Where transparent huge pages are
# "madvise" with direct compaction (a common default) and memory is fragmented, each first touch
# then stalls in compaction that seldom succeeds. Measured on this workplace's VM: filling a
# 352 MB array took 0.69 s with the request and 0.12 s without, and `costfilter test` on
# magnetic_tile ran 1.1-1.3 s faster of 16.4 s. Where huge pages are granted, going without costs
# far less than that. Set before numpy is first imported (NUMPY_MADVISE_HUGEPAGE is numpy's own
# documented switch); a value the user set is kept.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

import click

from .. import model_thread
from . import bench, deploy, fit, inspect, loop, station, tools

#: commands that score one image at a time for as long as they run
SERVICE_COMMANDS = ("serve", "watch")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="costfilter")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Unsupervised visual anomaly detection: fit on good images, score and localise defects."""
    # Here, before the command's own options are parsed: some of them load torch.
    if ctx.invoked_subcommand in SERVICE_COMMANDS:
        model_thread.spin_for_service()


for module in (fit, inspect, deploy, station, loop, tools, bench):
    for command in module.COMMANDS:
        main.add_command(command)

__all__ = ["main"]
