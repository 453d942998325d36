"""CostFilter-AD at the reference's filter width (issue 29): b = 48 (widths 48, 96, 96, 192)
over the memory base, trained with the reference's optimiser settings (Adam 1e-4, batch 12,
validation every 150 steps), one masked set at a time.

    python -m benchmarks.costfilter_reference --category welding [--steps 3000] [--budget 4200]

The training state is kept in runs/costfilter_reference/<category>.state (``--resume``: a run
that is stopped continues exactly where it was; its curve is logged beside it as JSONL). Each set's
row is added to benchmarks/results/costfilter_reference.json with the commit it was measured at.
The table shows the base alone, the filter alone and the blend at the λ chosen on validation
(held-out good images + synthetic anomalies; test labels only evaluate), next to the default
b = 8 run of benchmarks/results/costfilter.json on the same set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from costfilter.config import DetectorConfig
from costfilter.provenance import environment
from costfilter.tables import format_table

from .common import run_child, write_json
from .costfilter_ad import _lam, child_config, chosen_key

WIDTHS = (48, 96, 96, 192)
STATE_DIR = Path("runs/costfilter_reference")


def run(json_out: Path, masked_root: Path, category: str, *, steps: int, budget_s: float, seed: int = 0,
        figures: Path = Path("docs/figures")) -> dict[str, Any]:
    from .masked import find_categories

    cats = {d.name: d for d in find_categories(masked_root)}
    if category not in cats:
        raise SystemExit(f"{category}: not among {sorted(cats)}")
    cfg = child_config(DetectorConfig(), seed, {"base": "memory", "widths": list(WIDTHS)}, steps=steps, budget_s=budget_s)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    state = STATE_DIR / f"{category}.state"
    r = run_child("costfilter", {"data": [str(cats[category])], "config": cfg, "tag": f"reference {category}",
                                 "curve": True, "resume": str(state)}, f"reference {category}", reuse=False)
    env = environment()
    r["measured_in"] = {"git_commit": env["git_commit"], "cpu_count": env["cpu_count"], "versions": env["versions"]}
    r["device"], r["widths"], r["budget_s"], r["steps_asked"] = "cpu", list(WIDTHS), budget_s, steps
    r["seconds_per_step"] = step_seconds(state.with_name(state.name + ".curve.jsonl"))
    p = json.loads(json_out.read_text()) if json_out.is_file() else {"benchmark": "costfilter_reference", "seed": seed,
                                                                     "runs": {}}
    p["runs"][category] = r
    write_json(json_out, p, force=True)  # rows accumulate, one set at a time
    plot(p, figures / "costfilter_reference_curves.png")
    print(reference_table(p))
    return p


def step_seconds(curve: Path) -> dict[str, float] | None:
    """The median wall time between consecutive training steps, from the curve's clock stamps
    (lines written since they were added): robust to the stretches a long run was paused or
    shared the machine, which the run's total seconds include."""
    if not curve.is_file():
        return None
    stamps = {}
    for line in curve.read_text().splitlines():
        try:
            x = json.loads(line)
        except ValueError:
            continue
        if "loss" in x and "time" in x:
            stamps[x["step"]] = x["time"]
    gaps = [stamps[k] - stamps[k - 1] for k in stamps if k - 1 in stamps]
    if not gaps:
        return None
    import statistics

    return {"median_s": statistics.median(gaps), "steps_timed": len(gaps)}


def reference_table(p: dict[str, Any]) -> str:
    """Per set: base alone, filter alone and the chosen blend at b = 48, beside the b = 8 default."""
    default = {}
    path = Path(__file__).resolve().parent / "results" / "costfilter.json"
    if path.is_file():
        default = json.loads(path.read_text()).get("runs", {})
    rows = []
    for cat, r in p["runs"].items():
        per = r["lambdas"][cat]
        tr = r["training"]
        secs = r["stages_s"].get("train_s", 0.0)
        speed = r["throughput"]
        timed = r.get("seconds_per_step")
        rate = (f"{1 / timed['median_s']:.2f} steps/s (median of {timed['steps_timed']} steps)" if timed
                else f"{tr['steps'] / max(secs, 1e-9):.2f} steps/s")
        facts = [f"{tr['steps']} ({secs / 60:.0f} min, {rate}, {r['device']})",
                 f"{r['n_params'] / 1e6:.1f} M", f"{speed['model_over_backbone']:.2f}×"]
        for label, lam in (("base alone", "0.0"), ("b 48: filter alone", "1.0"),
                           (f"b 48: base + filter (λ = {_lam(r)})", chosen_key(r))):
            m = per[lam]
            rows.append([cat, label, m.get("image_auroc"), m.get("pixel_ap"), m.get("aupro")]
                        + (facts if lam == chosen_key(r) else [None, None, None]))
        d = default.get(cat, {}).get("memory")
        if d is not None:
            dm, da = d["lambdas"][cat][chosen_key(d)], d["lambdas"][cat]["1.0"]
            rows.append([cat, f"b 8 default, {d['training']['steps']} steps: filter alone", da.get("image_auroc"),
                         da.get("pixel_ap"), da.get("aupro"), None, None, None])
            rows.append([cat, f"b 8 default: base + filter (λ = {_lam(d)})", dm.get("image_auroc"), dm.get("pixel_ap"),
                         dm.get("aupro"), None, None, None])
    return format_table(["set", "model", "I-AUROC", "P-AP", "AUPRO", "steps (time, rate, device)", "filter params",
                         "test speed vs backbone"], rows)


def plot(p: dict[str, Any], path: Path) -> None:
    """Validation (base alone and best blend) and, reported only, test AUPRO of the filter alone, by step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import save_figure

    runs = list(p["runs"].items())
    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs), 3.3), squeeze=False)
    for ax, (cat, r) in zip(axes[0], runs):
        val = r["training"]["validation"]
        ax.plot([v["step"] for v in val], [v["base_score"] for v in val], "o-", label="validation: base alone")
        ax.plot([v["step"] for v in val], [v["score"] for v in val], "s--", label="validation: best blend")
        if r.get("curve"):
            ax.plot([c["step"] for c in r["curve"]], [c[cat] for c in r["curve"]], "^-",
                    label="test AUPRO, filter alone (reported only)")
        ax.axvline(r["training"]["best_step"], ls=":", c="grey")
        ax.set_title(f"{cat}: b = 48 over the memory base", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--category", required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/costfilter_reference.json"))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--budget", type=float, default=4200.0, help="training seconds (the run stops at steps or this)")
    a = ap.parse_args()
    run(a.json, a.data, a.category, steps=a.steps, budget_s=a.budget)
