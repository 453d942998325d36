"""CostFilter-AD transfer study: a filter trained on the other masked categories plus ELPV,
applied to a new category as is and after a short fine-tune; the same code as
``costfilter benchmark transfer``.

    python benchmarks/costfilter_transfer.py [--targets welding,metal_plate,magnetic_tile] [--force]

Writes benchmarks/results/costfilter_transfer.json.
"""

import argparse
from pathlib import Path

from costfilter.bench import common
from costfilter.bench.transfer import run_transfer

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/costfilter_transfer.json"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--targets", default="welding,metal_plate,magnetic_tile")
    ap.add_argument("--source-budget", type=float, default=240.0, help="training seconds of each source filter")
    ap.add_argument("--finetune", type=float, default=60.0, help="fine-tuning seconds on the target")
    ap.add_argument("--no-elpv", action="store_true", help="train the source filters on masked categories only")
    ap.add_argument("--in-domain", type=Path, default=Path("benchmarks/results/costfilter.json"))
    ap.add_argument("--resume", action="store_true", help="reuse runs finished by an interrupted invocation")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    if a.resume:
        common.CHILD_CACHE = Path("benchmarks/results/tmp-runs")
    run_transfer(a.json, masked_root=a.data, targets=tuple(t for t in a.targets.split(",") if t),
                 source_budget_s=a.source_budget, finetune_s=a.finetune, with_elpv=not a.no_elpv,
                 in_domain=a.in_domain, force=a.force)
