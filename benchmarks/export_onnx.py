"""ONNX export parity and speed on the real masked sets (issue 5).

    python -m benchmarks.export_onnx [--data ../shared/data] [--force]

For every category: fit the default memory bank, export it, compare exported and eager results on
every test image (score, map, decision, I-AUROC) and time both on one raw image at a time, with
the backbone alone in the same run. DFM and CostFilter-AD (training bounded) on the category
with the fewest training images. Writes benchmarks/results/export.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .deploy import run_export

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/export.json"))
    ap.add_argument("--budget", type=float, default=60.0, help="DFM / CostFilter-AD training seconds")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run_export(a.json, a.data, cf_budget_s=a.budget, force=a.force)
