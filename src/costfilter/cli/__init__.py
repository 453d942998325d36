"""``costfilter`` command line: thin commands that parse options, call the API, print.

Commands live in small modules by what they are for: ``fit``; ``inspect`` (test, predict,
calibrate); ``deploy`` (export, serve); ``station`` (watch); ``tools`` (info, doctor, synth-preview); ``bench`` (benchmark paper);
``distributed`` (the ``--engine ray`` side). The benchmarks are studies outside the package (``python -m
benchmarks.NAME`` in a checkout). Choices come from :mod:`costfilter.names`, so ``--help`` loads
no torch.
"""

from __future__ import annotations

import click

from . import bench, deploy, fit, inspect, loop, station, tools


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="costfilter")
def main() -> None:
    """Unsupervised visual anomaly detection: fit on good images, score and localise defects."""


for module in (fit, inspect, deploy, station, loop, tools, bench):
    for command in module.COMMANDS:
        main.add_command(command)

__all__ = ["main"]
