"""Memory-bank benchmark: bank size and sampler on ELPV (the speed rule behind the default bank),
approximations vs exact greedy, scaling, and with --data the bank size at pixel level and the two
image scores on every masked category under that root.

    python benchmarks/memory_bank.py [--data ../shared/data] [--quick] [--force]

Writes benchmarks/results/memory_bank.json and two PNGs under docs/figures/.
"""

import argparse
from pathlib import Path

from costfilter.bench import common
from costfilter.bench.memory_bank import run_memory_bank

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/memory_bank.json"))
    ap.add_argument("--figures", type=Path, default=Path("docs/figures"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="root of masked categories ('' to skip)")
    ap.add_argument("--quick", action="store_true", help="a reduced set of runs (smoke test)")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--resume", action="store_true", help="reuse runs finished by an interrupted invocation")
    a = ap.parse_args()
    if a.resume:
        common.CHILD_CACHE = Path("benchmarks/results/tmp-runs")
    run_memory_bank(a.json, a.figures, masked_root=a.data if str(a.data) else None, quick=a.quick, force=a.force)
