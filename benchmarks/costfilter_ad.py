"""CostFilter-AD benchmark (issue 3): base alone vs base + CostFilter for both bases.

    python benchmarks/costfilter_ad.py [--budget 120] [--elpv-budget 200] [--data ../shared/data] [--force]

ELPV runs as two classes (mono, poly) through the class-aware adaptor; each masked category is
single-class. Training stops at the wall-clock budget (CPU). Writes
benchmarks/results/costfilter.json and docs/figures/costfilter_scores.png.
"""

import argparse
from pathlib import Path

from costfilter.bench.costfilter import run_costfilter

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/costfilter.json"))
    ap.add_argument("--figures", type=Path, default=Path("docs/figures"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--budget", type=float, default=120.0, help="training seconds per masked category and base")
    ap.add_argument("--elpv-budget", type=float, default=200.0, help="training seconds on ELPV per base")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run_costfilter(a.json, a.figures, masked_root=a.data, budget_s=a.budget, elpv_budget_s=a.elpv_budget, force=a.force)
