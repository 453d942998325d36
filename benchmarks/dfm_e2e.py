"""DFM with its feature extractor trained (issue 20) vs frozen DFM and the memory bank.

    python benchmarks/dfm_e2e.py [--data ../shared/data] [--budget 150] [--no-elpv] [--force]

Each DFM variant trains for --budget seconds per data set (ELPV and every MVTec-layout category
under --data), keeping the step its validation split scores best. Writes
benchmarks/results/dfm_e2e.json and docs/figures/dfm_learning_curves.png.
"""

import argparse
from pathlib import Path

from costfilter.bench.dfm import run_dfm

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/dfm_e2e.json"))
    ap.add_argument("--figures", type=Path, default=Path("docs/figures"))
    ap.add_argument("--budget", type=float, default=150.0, help="DFM training seconds per data set")
    ap.add_argument("--no-elpv", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run_dfm(a.json, a.figures, a.data, budget_s=a.budget, elpv=not a.no_elpv, seed=a.seed, force=a.force)
