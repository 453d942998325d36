"""The one child-process entry point of the benchmarks: ``python -m benchmarks.child KIND SPEC``
runs one unit of work in a fresh process, so its time and peak RSS are its own, and prints its
result as one JSON line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def _kinds() -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
    from .common import fit_evaluate
    from .continual import continual_run
    from .costfilter_ad import fit_variants
    from .image_size import auto_choice

    return {"fit_evaluate": fit_evaluate, "costfilter": fit_variants, "continual": continual_run,
            "image_size_auto": auto_choice}


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in _kinds():
        sys.exit(f"usage: python -m benchmarks.child {{{','.join(_kinds())}}} SPEC_JSON")
    print(json.dumps(_kinds()[sys.argv[1]](json.loads(sys.argv[2]))))
