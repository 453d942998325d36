"""Plain-text tables and run provenance (git commit, versions, CPU) for results and benchmarks."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

METRIC_LABELS = {
    "image_auroc": "I-AUROC",
    "image_ap": "I-AP",
    "image_f1max": "I-F1max",
    "pixel_auroc": "P-AUROC",
    "pixel_ap": "P-AP",
    "pixel_f1max": "P-F1max",
    "aupro": "AUPRO@0.3",
}


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats to 3 decimals, None as an em dash."""

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return "—"
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def metrics_table(per_category: dict[str, dict[str, float]], mean: dict[str, float]) -> str:
    """Per-category metrics with a mean row; only the metrics present appear."""
    keys = [k for k in METRIC_LABELS if any(k in m for m in per_category.values())]
    rows = [[cat] + [m.get(k) for k in keys] for cat, m in per_category.items()]
    if len(per_category) > 1:
        rows.append(["mean"] + [mean.get(k) for k in keys])
    return format_table(["category"] + [METRIC_LABELS[k] for k in keys], rows)


def git_commit(cwd: Path | None = None) -> str | None:
    """The checkout's HEAD commit (with ``+dirty`` when it has changes), or None outside git."""
    try:
        cwd = cwd or Path(__file__).resolve().parent
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if sha.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Versions, CPU count and threads: what a reader needs to compare timings across machines."""
    versions = {}
    for pkg in ("costfilter", "torch", "numpy", "scipy", "scikit-learn", "pillow", "safetensors",
                "efficientnet-lite-pytorch", "faiss-cpu", "onnxruntime"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux ``ru_maxrss`` is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
