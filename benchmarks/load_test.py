"""Load test of the inspection service (issue 5): bounded, loopback only.

    python -m benchmarks.load_test [--category ../shared/data/mpdd/metal_plate] [--requests 120] [--force]

Fits the default memory bank on the category, serves the checkpoint and then its ONNX export with
``costfilter serve`` on 127.0.0.1, and sends at most --requests uploads of the category's test
images per client count (stopping after --time-limit seconds), reporting requests/s and
p50/p95/p99 latency. Writes benchmarks/results/load_test.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .deploy import run_load_test

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--category", type=Path, default=Path("../shared/data/mpdd/metal_plate"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/load_test.json"))
    ap.add_argument("--requests", type=int, default=120)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--time-limit", type=float, default=120.0)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run_load_test(a.json, a.category, requests=a.requests, concurrency=a.clients, time_limit_s=a.time_limit,
                  force=a.force)
