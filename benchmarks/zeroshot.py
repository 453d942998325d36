"""Zero-shot as MuSc specifies it (issue 18): ablation, pool size, defective share.

    python benchmarks/zeroshot.py [--data ../shared/data] [--no-elpv] [--force]

Runs each cumulative variant (one MuSc piece added at a time) on ELPV and every MVTec-layout
category under --data; the default on pools of 16, 32, 64 and all test images (sets of at most
200); and the default on magnetic_tile subsets whose share of defective images varies.
Writes benchmarks/results/zeroshot.json.
"""

import argparse
from pathlib import Path

from costfilter.bench.zeroshot import run_zeroshot

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/zeroshot.json"))
    ap.add_argument("--no-elpv", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run_zeroshot(a.json, a.data, elpv=not a.no_elpv, seed=a.seed, force=a.force)
