"""The studies: one front door each, run from the repository root as ``python -m benchmarks.NAME``
(``--help`` lists its options). Each prints a table and writes JSON (default
``benchmarks/results/NAME.json``) with commit, versions, CPU count, seed, per-stage times and the
backbone-alone figure; ``python -m benchmarks.make_readme`` regenerates the README tables from it,
and ``python -m benchmarks.compare COMMITTED RERUN`` says whether a re-run reproduced its metrics.

Not part of the installed package: the library ships what it needs (``costfilter.speed`` for
``doctor``); experiments live here, helpers they share in ``common``, ``figures``, ``child``,
``service`` (a served model in a child process) and ``probe_cases``.
"""
