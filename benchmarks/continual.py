"""Continual learning (issue 20): five tasks added one after another, forgetting measured.

    python benchmarks/continual.py [--data ../shared/data] [--budget 90] [--force]

Tasks in order: ELPV mono, ELPV poly, magnetic_tile, metal_plate, welding. Variants: the memory
bank appended, DFM fine-tuned without and with replay, and joint fits on all tasks. Writes benchmarks/results/continual.json.
"""

import argparse
from pathlib import Path

from costfilter.bench.continual import run_continual

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/continual.json"))
    ap.add_argument("--budget", type=float, default=90.0, help="DFM training seconds per task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run_continual(a.json, a.data, budget_s=a.budget, seed=a.seed, force=a.force)
