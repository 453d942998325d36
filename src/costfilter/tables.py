"""Markdown tables of metrics and results (the CLI's output and the README's benchmark tables)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

METRIC_LABELS = {
    "image_auroc": "I-AUROC",
    "image_ap": "I-AP",
    "image_f1max": "I-F1max",
    "pixel_auroc": "P-AUROC",
    "pixel_ap": "P-AP",
    "pixel_f1max": "P-F1max",
    "aupro": "AUPRO@0.3",
    "aupimo": "AUPIMO",
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
