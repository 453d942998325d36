"""CostFilter-AD benchmark: base alone vs base + CostFilter for both bases, an ablation of the
design choices, learning curves; the same code as ``costfilter benchmark costfilter``.

    python benchmarks/costfilter_ad.py [--budget 300] [--elpv-budget 600] [--data ../shared/data] [--force]

ELPV runs as two classes (mono, poly) through the class-aware adaptor; each masked category is
single-class. Training stops at the wall-clock budget (CPU). Writes
benchmarks/results/costfilter.json and docs/figures/costfilter_learning_curves.png.
"""

import argparse
from pathlib import Path

from costfilter.bench import common
from costfilter.bench.costfilter import extend_ablation, run_costfilter

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/costfilter.json"))
    ap.add_argument("--figures", type=Path, default=Path("docs/figures"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--budget", type=float, default=300.0, help="training seconds per masked category and base")
    ap.add_argument("--elpv-budget", type=float, default=600.0, help="training seconds on ELPV per base")
    ap.add_argument("--ablation", default="welding,metal_plate", help="categories for the ablation ('' to skip)")
    ap.add_argument("--ablation-budget", type=float, default=120.0)
    ap.add_argument("--variants", default="", help="semicolon-separated subset of the ablation variants (names contain commas; default: all)")
    ap.add_argument("--curves", default="welding,metal_plate", help="data sets with a learning curve")
    ap.add_argument("--resume", action="store_true", help="reuse runs finished by an interrupted invocation")
    ap.add_argument("--add-ablation", metavar="CATEGORY", default=None,
                    help="only run --variants on CATEGORY and add them to the existing --json")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    if a.resume:
        common.CHILD_CACHE = Path("benchmarks/results/tmp-runs")
    split = lambda s: tuple(x for x in s.split(",") if x)
    variants = tuple(v.strip() for v in a.variants.split(";") if v.strip())
    if a.add_ablation:
        extend_ablation(a.json, a.data, a.add_ablation, variants)
        raise SystemExit(0)
    run_costfilter(a.json, a.figures, masked_root=a.data, budget_s=a.budget, elpv_budget_s=a.elpv_budget,
                   ablation=split(a.ablation), ablation_budget_s=a.ablation_budget, curves=split(a.curves),
                   variants=variants or None, force=a.force)
