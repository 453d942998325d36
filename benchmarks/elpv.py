"""ELPV image-level benchmark (issue 2), the same code as ``costfilter benchmark elpv``.

    python benchmarks/elpv.py [--force]

Writes benchmarks/results/elpv.json and docs/figures/elpv_heatmaps.png.
"""

import argparse
from pathlib import Path

from costfilter.bench.elpv import run_elpv

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/elpv.json"))
    ap.add_argument("--figures", type=Path, default=Path("docs/figures"))
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run_elpv(a.json, heatmaps=a.figures, force=a.force)
