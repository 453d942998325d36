"""Does a re-run reproduce a committed benchmark? Compares the metrics of two result files.

    python -m benchmarks.elpv --json /tmp/elpv.json && python -m benchmarks.compare benchmarks/results/elpv.json /tmp/elpv.json

Every number whose key path names a metric (AUROC, AP, AUPRO, F1, agreement, share of decisions,
…) is compared; times, rates, memory, commits and environments are not (they depend on the
machine). Exits 1 and lists each metric that moved by more than ``--tol`` (absolute).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: key-path words that make a number a metric
METRIC = re.compile(r"auroc|(^|_)ap($|_)|aupro|f1|agreement|accuracy|recall|precision|decision|flagged|removed"
                    r"|forgetting|found|correct|handled|ok$", re.IGNORECASE)
#: key-path words that make a number a measurement of the machine
MACHINE = re.compile(r"(^|_)s$|_s_|time|rate|per_s|latency|rss|mb$|ms$|speed|throughput|commit|environment|"
                     r"created|version|steps|images_per|over_backbone|overhead", re.IGNORECASE)


def leaves(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, (*path, str(k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, (*path, str(i)))
    else:
        yield path, value


def metrics(payload: dict[str, Any]) -> dict[str, float]:
    """Key path → value of every metric number (booleans count as 0/1)."""
    out = {}
    for path, value in leaves(payload):
        if not isinstance(value, (int, float)) or any(MACHINE.search(p) for p in path):
            continue
        if any(METRIC.search(p) for p in path):
            out["/".join(path)] = float(value)
    return out


def compare(committed: dict[str, Any], rerun: dict[str, Any], tol: float) -> list[str]:
    """Lines describing each metric that differs by more than ``tol``, or is in one file only."""
    a, b = metrics(committed), metrics(rerun)
    lines = [f"{k}: committed {a[k]:.6g}, re-run {b[k]:.6g}" for k in sorted(set(a) & set(b))
             if not abs(a[k] - b[k]) <= tol]
    lines += [f"{k}: only in the committed file" for k in sorted(set(a) - set(b))]
    lines += [f"{k}: only in the re-run" for k in sorted(set(b) - set(a))]
    return lines


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("committed", type=Path)
    ap.add_argument("rerun", type=Path)
    ap.add_argument("--tol", type=float, default=1e-6, help="largest absolute difference that counts as equal")
    a = ap.parse_args()
    old, new = (json.loads(p.read_text()) for p in (a.committed, a.rerun))
    diffs = compare(old, new, a.tol)
    n = len(metrics(old))
    if diffs:
        print(f"{len(diffs)} of {n} metrics differ:\n" + "\n".join(f"  {d}" for d in diffs))
        sys.exit(1)
    print(f"reproduced: all {n} metrics within {a.tol:g}")
