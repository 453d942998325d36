"""Ray batch scoring vs the local path on this machine (issue 17).

    python benchmarks/ray_scale.py [--category ../shared/data/magnetic_tile/magnetic_tile] [--paths 5000] [--force]

Fits the default memory bank on the category, replicates its test images to --paths distinct
paths, and scores them locally, on Ray with one actor holding every CPU, and with one actor per
CPU: images/s, agreement with the local scores, Ray's start-up, per-job and per-image costs.
Writes benchmarks/results/ray_scale.json (needs the [ray] extra).
"""

import argparse
from pathlib import Path

from costfilter.bench.ray_scale import run_ray_scale

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--category", type=Path, default=Path("../shared/data/magnetic_tile/magnetic_tile"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/ray_scale.json"))
    ap.add_argument("--paths", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run_ray_scale(a.json, a.category, n_paths=a.paths, seed=a.seed, force=a.force)
