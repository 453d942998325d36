"""The paper protocol (``costfilter benchmark paper``) on the three shared masked sets with the
default backbone (issue 28): single-class (a model per set) and multi-class (one model on all
three), the papers' eight columns with AUPIMO.

    python -m benchmarks.paper [--data ../shared/data] [--method memory]

Writes benchmarks/results/paper.json; the README table is generated from it (make_readme).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from costfilter.config import DetectorConfig
from costfilter.protocol import paper_tables, run_paper

from .common import write_json

ROOTS = ("magnetic_tile", "mpdd", "battery_weld")


def table(p: dict) -> str:
    """The README's tables: one per setting, then the protocol in two lines."""
    pr = p["protocol"]
    return (paper_tables(p) + f"\n\nProtocol: {pr['input']}; {pr['maps']}; {pr['masks']}. {pr['aupimo']}.")


def run(data: Path, method: str, json_out: Path) -> dict:
    cfg = DetectorConfig(method=method)
    result = run_paper([data / r for r in ROOTS], "mvtec", cfg, progress=False, log=print)
    write_json(json_out, result, force=True)
    print(table(result))
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--method", default="memory")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/paper.json"))
    a = ap.parse_args()
    run(a.data, a.method, a.json)
