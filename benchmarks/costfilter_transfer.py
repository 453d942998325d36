"""CostFilter-AD transfer study: a filter trained on the other masked categories plus ELPV,
applied to a new category as is and after a short fine-tune.

    python -m benchmarks.costfilter_transfer [--targets welding,metal_plate,magnetic_tile] [--force]

Writes benchmarks/results/costfilter_transfer.json.

CostFilter-AD transfer study: does a filter trained on other data help a new category without
(or with little) training there? For each target category, one filter is trained on the other
masked categories plus ELPV (one multi-class model); the target then fits its own memory base and
starts from that filter, used as it is (no step) or fine-tuned for a short budget. λ is chosen on
the target's own validation (good images + synthetic anomalies) by the usual rule, so a filter
that does not transfer is switched off. Test numbers are reported only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from costfilter.config import DetectorConfig
from costfilter.tables import format_table

from .common import run_child, write_json
from .costfilter_ad import child_config, chosen_key


def run_transfer(json_out: Path, *, masked_root: Path, targets: tuple[str, ...], source_budget_s: float,
                 finetune_s: float, with_elpv: bool = True, seed: int = 0, force: bool = False,
                 config: DetectorConfig | None = None, in_domain: Path | None = None) -> dict[str, Any]:
    """Run the study for each category named in ``targets`` (memory base); print and write JSON.
    ``in_domain``: a ``costfilter.json`` whose per-category runs are shown beside (same seed)."""
    from .masked import find_categories

    cats = {d.name: d for d in find_categories(Path(masked_root))}
    unknown = set(targets) - set(cats)
    if unknown:
        raise ValueError(f"unknown target categories {sorted(unknown)}; found {sorted(cats)}")
    base_cfg = config or DetectorConfig()
    models = Path(json_out).parent / "tmp-runs"
    models.mkdir(parents=True, exist_ok=True)

    def spec(data: list[str], init: str | None, steps: int, budget: float, save: str | None) -> dict[str, Any]:
        cfg = child_config(base_cfg, seed, {"base": "memory", "init_filter": init}, steps=steps, budget_s=budget)
        # a source filter is only wanted as a model: its own test sets are not scored
        return {"data": data, "config": cfg, "tag": "transfer", "curve": False,
                **({"save": save, "evaluate": False} if save else {})}

    runs: dict[str, Any] = {}
    for target in targets:
        sources = [str(d) for name, d in cats.items() if name != target] + (["elpv"] if with_elpv else [])
        ckpt = models / f"transfer-source-{target}-seed{seed}.ckpt"
        # a kept result is no use without its model file
        source = run_child("costfilter", spec(sources, None, 100000, source_budget_s, str(ckpt)),
                           f"transfer source for {target}", reuse=ckpt.is_file())
        as_is = run_child("costfilter", spec([str(cats[target])], str(ckpt), 0, 0.0, None), f"{target}: transferred")
        tuned = run_child("costfilter", spec([str(cats[target])], str(ckpt), 100000, finetune_s, None),
                          f"{target}: transferred + {finetune_s:.0f} s")
        runs[target] = {"sources": [Path(s).name for s in sources],
                        "source": {k: source[k] for k in ("fit_s", "stages_s", "training", "blend")},
                        "as_is": _slim(as_is), "finetuned": _slim(tuned)}
        if in_domain is not None and Path(in_domain).is_file():
            own = json.loads(Path(in_domain).read_text())["runs"].get(target, {}).get("memory")
            if own is not None:
                runs[target]["in_domain"] = _slim(own)
    payload = {"benchmark": "costfilter_transfer", "seed": seed, "source_budget_s": source_budget_s,
               "finetune_s": finetune_s, "runs": runs}
    write_json(json_out, payload, force)
    print(transfer_table(payload))
    return payload


def _slim(r: dict[str, Any]) -> dict[str, Any]:
    """What the table needs from a run: every λ's metrics, the chosen λ and why, steps, times."""
    training = r.get("training") or {}
    return {"lambdas": r["lambdas"], "blend": r["blend"], "steps": training.get("steps"),
            "why": training.get("chosen", {}).get("why", ""), "train_s": r["stages_s"].get("train_s"),
            "fit_s": r["fit_s"], "throughput": r["throughput"]}


def transfer_table(p: dict[str, Any]) -> str:
    """One block per target: base alone, in-domain filter, transferred as is, transferred + fine-tune."""
    rows = []
    for target, r in p["runs"].items():
        base = r["as_is"]["lambdas"][target]["0.0"]
        rows.append([target, "memory base alone", base.get("image_auroc"), base.get("pixel_ap"), base.get("aupro"),
                     None, None, None])
        for key, label in (("in_domain", "filter trained on this category"),
                           ("as_is", f"filter from {' + '.join(r['sources'])}, as is"),
                           ("finetuned", f"the same, fine-tuned {p['finetune_s']:.0f} s here")):
            run = r.get(key)
            if run is None:
                continue
            per = run["lambdas"][target]
            chosen, alone = per[chosen_key(run)], per["1.0"]
            lam = chosen_key(run)
            rows.append([target, label, chosen.get("image_auroc"), chosen.get("pixel_ap"), chosen.get("aupro"),
                         alone.get("aupro"), lam, run["steps"]])
    return format_table(["target", "model", "I-AUROC", "P-AP", "AUPRO", "filter alone AUPRO", "λ chosen",
                         "steps here"], rows)


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
        from . import common

        common.CHILD_CACHE = Path("benchmarks/results/tmp-runs")
    run_transfer(a.json, masked_root=a.data, targets=tuple(t for t in a.targets.split(",") if t),
                 source_budget_s=a.source_budget, finetune_s=a.finetune, with_elpv=not a.no_elpv,
                 in_domain=a.in_domain, force=a.force)
