"""Robustness benchmark: hostile and careless inputs against the CLI and the service, with the
peak memory of the process that handled each; the same code as ``costfilter benchmark robustness``.

    python benchmarks/robustness.py [--data ../shared/data/battery_weld/welding] [--force]

Writes benchmarks/results/robustness.json.
"""

import argparse
from pathlib import Path

from costfilter.bench.robustness import run_robustness

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/battery_weld/welding"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/robustness.json"))
    ap.add_argument("--flips", type=int, default=300, help="byte flips tried on the exported ONNX file")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run_robustness(a.json, a.data, flips=a.flips, force=a.force)
