"""Zero-shot as MuSc specifies it (issue 18): ablation, pool size, defective share.

    python -m benchmarks.zeroshot [--data ../shared/data] [--no-elpv] [--force]

Runs each cumulative variant (one MuSc piece added at a time) on ELPV and every MVTec-layout
category under --data; the default on pools of 16, 32, 64 and all test images (sets of at most
200); and the default on magnetic_tile subsets whose share of defective images varies.
Writes benchmarks/results/zeroshot.json.

Zero-shot as MuSc specifies it (issue 18): an ablation of its pieces, the pool (batch) size,
and the share of defective images in a pool.

No fit and no labels are used to choose anything: the default is MuSc's published recipe, with
one speed rule for a CNN (a coarser layer scored on its own grid). Every variant's test numbers
are reported. Each run is a child process (its time and memory its own).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from costfilter.config import DetectorConfig
from costfilter.tables import format_table

from .common import run_child, write_json
from .masked import find_categories

#: Cumulative variants, each adding one MuSc piece to the one before; then the published grid.
#: key → (table label, ZeroShotConfig overrides of the default).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "before": ("before: one 3×3 degree, layers concatenated, top-1 % score",
               {"degrees": [3], "per_layer": False, "image_score": "top_percent", "rescore_k": []}),
    "degrees": ("+ degrees 1, 3, 5", {"per_layer": False, "image_score": "top_percent", "rescore_k": []}),
    "per-layer": ("+ each layer scored alone", {"image_score": "top_percent", "rescore_k": []}),
    "max": ("+ image score = map max", {"rescore_k": []}),
    "rscin": ("+ RsCIN (default)", {}),
    "fine-grid": ("default, coarse layer resampled to the fine grid (as published)", {"native_grid": False}),
}
DEFAULT = "rscin"


def _config(overrides: dict[str, Any], seed: int, batch_size: int | None = None) -> dict[str, Any]:
    cfg = DetectorConfig(method="zeroshot", seed=seed)
    for k, v in overrides.items():
        setattr(cfg.zeroshot, k, tuple(v) if isinstance(v, list) else v)
    if batch_size:
        cfg.zeroshot.batch_size = batch_size
    cfg.validate()
    return cfg.to_dict()


def _row(r: dict[str, Any]) -> dict[str, Any]:
    keep = ("image_auroc", "pixel_auroc", "aupro", "n_test")
    out = {"per_category": {c: {k: m[k] for k in keep if k in m} for c, m in r["per_category"].items()},
           "images_per_s": r["images_per_s"], "test_s": r["test_s"], "peak_rss_mb": r["peak_rss_mb"]}
    if "pooled_image" in r:
        out["pooled_image_auroc"] = r["pooled_image"]["image_auroc"]
    return out


def _share_subset(samples_root: Path, share: float, n: int, seed: int) -> list[str]:
    """``n`` test images of a category, a ``share`` of them defective, drawn with a seed."""
    from costfilter.data import load_dataset, split_of

    test = split_of(load_dataset(samples_root), "test")
    good = [str(s.path) for s in test if s.label == 0]
    bad = [str(s.path) for s in test if s.label == 1]
    n_bad = round(share * n)
    rng = np.random.default_rng([seed, round(share * 100)])
    return sorted(rng.choice(bad, n_bad, replace=False).tolist() + rng.choice(good, n - n_bad, replace=False).tolist())


def run_zeroshot(json_out: Path, masked_root: Path, *, elpv: bool = True, variants: tuple[str, ...] = (),
                 pools: tuple[int, ...] = (16, 32, 64), all_pool_max: int = 200,
                 shares: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9), share_category: str = "magnetic_tile",
                 share_images: int = 160, seed: int = 0, force: bool = False) -> dict[str, Any]:
    """The ablation over ELPV and every masked category, the pool-size study on the masked
    categories (the whole test set as one pool where it has at most ``all_pool_max`` images), and
    the defective-share study on ``share_category``."""
    cats = find_categories(masked_root)
    sets = (["elpv"] if elpv else []) + [str(c) for c in cats]
    names = list(variants) or list(VARIANTS)
    ablation: dict[str, dict[str, Any]] = {}
    for name in names:
        ablation[name] = {}
        for data in sets:
            tag = f"{name} / {Path(data).name}"
            r = run_child("fit_evaluate", {"config": _config(VARIANTS[name][1], seed), "data": data, "tag": tag}, tag)
            ablation[name][Path(data).name] = _row(r)
    pool_rows: dict[str, dict[str, Any]] = {}
    for c in cats:
        n_test = sum(1 for p in (c / "test").rglob("*") if p.is_file())
        sizes = list(pools) + ([n_test] if n_test <= all_pool_max else [])
        for b in sizes:
            key = "all" if b == n_test else str(b)
            if b == DetectorConfig().zeroshot.batch_size:  # the default pool: the ablation's run
                pool_rows.setdefault(key, {})[c.name] = ablation[DEFAULT][c.name]
                continue
            r = run_child("fit_evaluate", {"config": _config({}, seed, b), "data": str(c), "tag": f"pool {key}"},
                          f"pool {key} / {c.name}")
            pool_rows.setdefault(key, {})[c.name] = _row(r)
    share_rows = {}
    share_root = next((c for c in cats if c.name == share_category), None)
    if share_root is not None:
        for share in shares:
            paths = _share_subset(share_root, share, share_images, seed)
            r = run_child("fit_evaluate", {"config": _config({}, seed), "data": [str(share_root)], "test_paths": paths,
                                           "tag": f"share {share:.0%}"}, f"share {share:.0%}")
            share_rows[f"{share:.2f}"] = _row(r)
    payload = {"benchmark": "zeroshot", "seed": seed, "data_root": str(masked_root),
               "sets": [Path(s).name for s in sets],
               "variants": {n: {"label": VARIANTS[n][0], "overrides": VARIANTS[n][1]} for n in names},
               "default": DEFAULT, "ablation": ablation,
               "pools": pool_rows, "shares": share_rows, "share_category": share_category,
               "share_images": share_images, "default_batch_size": DetectorConfig().zeroshot.batch_size}
    write_json(json_out, payload, force)
    print(zeroshot_tables(payload))
    return payload


def _mean(rows: dict[str, Any], sets: list[str], key: str) -> float | None:
    vals = [rows[s]["per_category"][c][key] for s in sets if s in rows for c in rows[s]["per_category"]
            if key in rows[s]["per_category"][c]]
    return float(np.mean(vals)) if vals else None


def zeroshot_tables(p: dict[str, Any]) -> str:
    """README tables: the ablation, the pool sizes, the defective share."""
    masked = [s for s in p["sets"] if s != "elpv"]
    head = ["variant", "ELPV I-AUROC"] + [f"{s} I-AUROC / P-AUROC / AUPRO" for s in masked] + [
        "masked mean I-AUROC / AUPRO", "images/s (masked)"]
    rows = []
    for name, res in p["ablation"].items():
        cells = [p["variants"][name]["label"]]
        cells.append(f"{res['elpv']['pooled_image_auroc']:.3f}" if "elpv" in res else "—")
        for s in masked:
            m = next(iter(res[s]["per_category"].values()))
            cells.append(f"{m['image_auroc']:.3f} / {m['pixel_auroc']:.3f} / {m['aupro']:.3f}")
        cells.append(f"{_mean(res, masked, 'image_auroc'):.3f} / {_mean(res, masked, 'aupro'):.3f}")
        n = sum(next(iter(res[s]["per_category"].values()))["n_test"] for s in masked)
        cells.append(f"{n / sum(res[s]['test_s'] for s in masked):.1f}")
        rows.append(cells)
    out = format_table(head, rows)
    if p["pools"]:
        head = ["pool (images scored together)"] + [f"{s} I-AUROC / AUPRO" for s in masked] + ["images/s"]
        rows = []
        for key, res in p["pools"].items():
            cells = [key + (" (default)" if key == str(p["default_batch_size"]) else "")]
            for s in masked:
                m = next(iter(res[s]["per_category"].values())) if s in res else None
                cells.append(f"{m['image_auroc']:.3f} / {m['aupro']:.3f}" if m else "not run")
            cells.append(f"{np.mean([r['images_per_s'] for r in res.values()]):.1f}")
            rows.append(cells)
        out += "\n\n" + format_table(head, rows)
    if p["shares"]:
        head = [f"defective share of each pool ({p['share_category']}, {p['share_images']} images)", "I-AUROC",
                "P-AUROC", "AUPRO"]
        rows = [[f"{float(k):.0%}", *(next(iter(r["per_category"].values()))[m] for m in ("image_auroc", "pixel_auroc",
                                                                                        "aupro"))]
                for k, r in p["shares"].items()]
        out += "\n\n" + format_table(head, rows)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/zeroshot.json"))
    ap.add_argument("--no-elpv", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run_zeroshot(a.json, a.data, elpv=not a.no_elpv, seed=a.seed, force=a.force)
