"""Contamination benchmark: defective images planted among the good training images (0, 2, 5,
10 % of the training set), the memory bank fitted as it is and with ``--contamination auto``.

    python -m benchmarks.contamination [--data ../shared/data] [--sets magnetic_tile,metal_plate,welding,elpv]
                                      [--seed 0] [--force]

Writes benchmarks/results/contamination.json.

Contamination benchmark: defective images planted among the good training images.

For each set and each level (a share of the training set's size), a seeded draw of defective
test images moves into the training split as if they were good (and leaves the test split).
The memory bank is then fitted twice: as it is (``contamination 0``: the planted images are
flagged but stay in the bank) and robust (``contamination auto``: the flagged images are left
out and the fit repeated). Both are scored on the remaining test images; the flag's precision
and recall on the planted images say how well screening finds them. No test label chooses
anything: the rule (median + 3.5·MAD of the leave-one-out scores) is fixed beforehand.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from costfilter.tables import format_table

from .common import write_json

LEVELS = (0.0, 0.02, 0.05, 0.10)
SETS = {"magnetic_tile": "magnetic_tile/magnetic_tile", "metal_plate": "mpdd/metal_plate",
        "welding": "battery_weld/welding"}
KEYS = ("image_auroc", "pixel_auroc", "aupro")


def contaminated(samples: list[Any], level: float, seed: int) -> tuple[list[Any], list[str]]:
    """``samples`` with ``round(level × train size)`` seeded defective test images moved into the
    training split as good ones; also their paths."""
    train = [s for s in samples if s.split == "train"]
    bad = [i for i, s in enumerate(samples) if s.split == "test" and s.label == 1]
    n = round(level * len(train))
    picked = set(np.random.default_rng(seed).choice(bad, size=min(n, len(bad)), replace=False).tolist()) if n else set()
    out = [dataclasses.replace(s, split="train", label=0, defect="good", mask=None) if i in picked else s
           for i, s in enumerate(samples)]
    return out, [str(samples[i].path) for i in sorted(picked)]


def _one(samples: list[Any], contamination: str | float, seed: int) -> tuple[dict[str, Any], Any]:
    from costfilter.api import Detector
    from costfilter.config import DetectorConfig

    cfg = DetectorConfig(seed=seed)
    cfg.screening.contamination = contamination
    t0 = time.perf_counter()
    det = Detector(cfg, progress=False).fit(samples)
    fit_s = time.perf_counter() - t0
    ev = det.evaluate(samples)
    return {"fit_s": fit_s, **{k: ev.mean.get(k) for k in KEYS}, "n_fit": det.state.n_train_images}, det


def run_contamination(data_root: Path, json_out: Path, *, seed: int = 0, levels: tuple[float, ...] = LEVELS,
                      sets: tuple[str, ...] = (*SETS, "elpv"), force: bool = False,
                      figure: Path | None = None) -> dict[str, Any]:
    """Every set × level, plain and robust; print the table, write JSON (and the figure)."""
    from costfilter.data import load_dataset
    from costfilter.data.mvtec import load_mvtec

    rows = []
    for name in sets:
        samples = load_dataset("elpv", "elpv") if name == "elpv" else load_mvtec(data_root / SETS[name])
        clean_det = None
        for level in sorted(levels):
            mixed, planted = contaminated(samples, level, seed)
            plain, det = _one(mixed, 0.0, seed)
            clean_det = clean_det or det  # level 0: the fit on the clean training set
            # The clean fit scored on this level's test images (planted ones left it): the loss
            # of the plain fit is measured on the same images.
            ev = clean_det.evaluate(mixed)
            clean = {k: ev.mean.get(k) for k in KEYS}
            flagged = {f["path"] for f in det.state.screening["flagged"]}
            robust, det_r = _one(mixed, "auto", seed)
            hit = len(flagged & set(planted))
            rows.append({"set": name, "level": level, "planted": len(planted),
                         "train": sum(s.split == "train" for s in mixed),
                         "test": sum(s.split == "test" for s in mixed), "flagged": len(flagged),
                         "flag_precision": hit / len(flagged) if flagged else None,
                         "flag_recall": hit / len(planted) if planted else None,
                         "removed": len(det_r.state.screening["removed"]), "clean": clean, "plain": plain,
                         "robust": robust})
            print(f"  {name} {level:.0%}: planted {len(planted)}, flagged {len(flagged)} ({hit} planted), "
                  f"I-AUROC clean {clean['image_auroc']:.3f}, plain {plain['image_auroc']:.3f}, "
                  f"auto {robust['image_auroc']:.3f}", flush=True)
    payload = {"benchmark": "contamination", "seed": seed, "levels": list(levels), "rule": "robust z > 3.5",
               "method": "memory", "rows": rows}
    write_json(json_out, payload, force)
    print(contamination_table(payload))
    if figure is not None:
        contamination_figure(payload, figure)
        print(f"figure: {figure}")
    return payload


def contamination_figure(p: dict[str, Any], path: Path) -> None:
    """Per set and metric, the score against the planted share: clean fit, plain fit, auto."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import save_figure

    names = list(dict.fromkeys(r["set"] for r in p["rows"]))
    fig, axes = plt.subplots(len(KEYS), len(names), figsize=(3.2 * len(names), 2.6 * len(KEYS)), squeeze=False)
    for j, name in enumerate(names):
        rs = sorted((r for r in p["rows"] if r["set"] == name), key=lambda r: r["level"])
        x = [100 * r["level"] for r in rs]
        for i, k in enumerate(KEYS):
            ax = axes[i][j]
            if rs[0]["plain"][k] is None:
                ax.set_axis_off()
                continue
            for variant, style in (("clean", ":"), ("plain", "-o"), ("robust", "-s")):
                ax.plot(x, [r[variant][k] for r in rs], style, label={"robust": "auto"}.get(variant, variant))
            ax.set_title(f"{name}: {k}", fontsize=9)
            ax.set_xlabel("planted, % of train", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _f(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def contamination_table(p: dict[str, Any]) -> str:
    """One row per set and level: plain → robust for each metric, and the flag's quality."""
    rows = []
    for r in p["rows"]:
        pl, ro = r["plain"], r["robust"]
        cl = r["clean"]
        rows.append([r["set"], f"{r['level']:.0%}", r["planted"], r["flagged"], _f(r["flag_precision"], 2),
                     _f(r["flag_recall"], 2), r["removed"],
                     *[f"{_f(cl[k])} / {_f(pl[k])} / {_f(ro[k])}" for k in KEYS],
                     f"{pl['fit_s']:.0f} / {ro['fit_s']:.0f}"])
    return format_table(["set", "planted (share of train)", "planted images", "flagged", "flag precision",
                         "flag recall", "left out (auto)", "I-AUROC clean / plain / auto",
                         "P-AUROC clean / plain / auto", "AUPRO clean / plain / auto", "fit s plain / auto"], rows)


def recovery_summary(p: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per set, at its highest level: the plain fit's loss against the clean fit (on the same
    test images), the share of it the robust fit recovers, and the robust fit's cost on the
    clean set (per metric)."""
    out: dict[str, dict[str, float | None]] = {}
    for name in dict.fromkeys(r["set"] for r in p["rows"]):
        rs = {r["level"]: r for r in p["rows"] if r["set"] == name}
        clean, top = rs.get(0.0), rs.get(max(rs))
        if clean is None or top is None:
            continue
        for k in KEYS:
            if top["plain"][k] is None:
                continue
            loss = top["clean"][k] - top["plain"][k]
            out.setdefault(name, {})[f"{k}_loss"] = loss
            out[name][f"{k}_recovered"] = (top["robust"][k] - top["plain"][k]) / loss if loss > 0 else None
            out[name][f"{k}_clean_cost"] = clean["plain"][k] - clean["robust"][k]
    return out


def contamination_tables(p: dict[str, Any]) -> str:
    """The table, then per set what the robust fit recovered at the highest level."""
    lines = []
    for name, r in recovery_summary(p).items():
        parts = []
        for k, label in zip(KEYS, ("I-AUROC", "P-AUROC", "AUPRO")):
            if f"{k}_loss" not in r:
                continue
            rec = r[f"{k}_recovered"]
            parts.append(f"{label} loss {r[f'{k}_loss']:+.3f}, recovered "
                         + ("— (no loss)" if rec is None else f"{rec:.0%}") + f", clean cost {r[f'{k}_clean_cost']:+.3f}")
        lines.append(f"* **{name}** at {max(p['levels']):.0%}: " + "; ".join(parts))
    return contamination_table(p) + "\n\n" + "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--sets", default=",".join([*SETS, "elpv"]))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/contamination.json"))
    ap.add_argument("--figure", type=Path, default=Path("docs/figures/contamination.png"))
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    run_contamination(args.data, args.json, seed=args.seed, sets=tuple(args.sets.split(",")), force=args.force,
                      figure=args.figure)
