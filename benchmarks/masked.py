"""Pixel-level benchmark on real masked data (issue 9), the same code as ``costfilter benchmark masked``.

    python benchmarks/masked.py [--data ../shared/data] [--force]

Writes benchmarks/results/masked.json and per-category grids and curves under docs/figures/masked/.
"""

import argparse
from pathlib import Path

from costfilter.bench.masked import run_masked

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/masked.json"))
    ap.add_argument("--figures", type=Path, default=Path("docs/figures/masked"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run_masked(a.data, a.json, size=a.size, figures=a.figures, force=a.force)
