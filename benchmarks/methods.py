"""Every method side by side on ELPV (issue 4): memory bank, DFM, zero-shot.

    python benchmarks/methods.py [--dfm-budget 150] [--force]

Writes benchmarks/results/methods.json. CostFilter-AD's rows are in benchmarks/costfilter.py.
"""

import argparse
from pathlib import Path

from costfilter.bench.methods import run_methods

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/methods.json"))
    ap.add_argument("--dfm-budget", type=float, default=150.0)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run_methods(a.json, dfm_budget_s=a.dfm_budget, force=a.force)
