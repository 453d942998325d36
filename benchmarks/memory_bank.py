"""Memory-bank benchmark (issue 8): coreset trade-offs, approximations vs exact greedy, scaling.

    python benchmarks/memory_bank.py [--quick] [--force]

Writes benchmarks/results/memory_bank.json and two PNGs under docs/figures/.
"""

import argparse
from pathlib import Path

from costfilter.bench.memory_bank import run_memory_bank
from costfilter.config import MemoryBankConfig

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/memory_bank.json"))
    ap.add_argument("--figures", type=Path, default=Path("docs/figures"))
    ap.add_argument("--quick", action="store_true", help="a reduced set of runs (smoke test)")
    ap.add_argument("--with-10pct", action="store_true", help="also the 10 %% banks (~40 min more on 2 cores)")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run_memory_bank(a.json, a.figures, default_ratio=MemoryBankConfig().coreset_ratio, quick=a.quick,
                    with_10pct=a.with_10pct, force=a.force)
