"""Contamination benchmark: defective images planted among the good training images (0, 2, 5,
10 % of the training set), the memory bank fitted as it is and with ``--contamination auto``.

    python benchmarks/contamination.py [--data ../shared/data] [--sets magnetic_tile,metal_plate,welding,elpv]
                                      [--seed 0] [--force]

Writes benchmarks/results/contamination.json.
"""

import argparse
from pathlib import Path

from costfilter.bench.contamination import SETS, run_contamination

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--sets", default=",".join([*SETS, "elpv"]))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/contamination.json"))
    ap.add_argument("--figure", type=Path, default=Path("docs/figures/contamination.png"))
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    run_contamination(args.data, args.json, seed=args.seed, sets=tuple(args.sets.split(",")), force=args.force,
                      figure=args.figure)
