"""Bigger banks at the same speed? (issue 32, item 5): approximate nearest-neighbour search
(faiss IVF and HNSW) over every training patch, against the exact search of the default bank.

    python -m benchmarks.bank_search [--data ../shared/data] [--force]

Per shared masked set: memory banks of 4,096 (the default), 16,384 and 65,536 rows are fitted
and searched exactly (the library's own search: bfloat16 on CPUs with bfloat16 matrix units);
then the default model scores the test split with its bank replaced by every training patch
searched through a faiss IVF-Flat index (``nlist`` ≈ 4·√rows, a power of two; ``nprobe`` lists
searched per query) or an HNSW graph (32 links; ``ef`` candidates kept per query). Features,
map smoothing and image score are the default model's; only the search differs. Speed is the
model's images/s at batch 32 against the backbone alone, in the same call (``speed.throughput``
on 64 test images). The exact search over every patch is too slow to repeat here (magnetic_tile:
about 3 images/s); its accuracy comes from ``memory_bank.json``'s "every patch" rows.

The rule (the issue's): an approximate search replaces exact search only if it keeps scoring
≥ 0.75× the backbone and brings mean P-AUROC within 0.005 of the full bank's. Writes
benchmarks/results/bank_search.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from costfilter.bank.memory_bank import MemoryBank
from costfilter.config import DetectorConfig
from costfilter.data import split_of
from costfilter.tables import format_table

from .common import load_samples, load_tensors, write_json
from .masked import find_categories
from .memory_bank import SPEED_RULE

#: bank sizes searched exactly, each fitted as a user would (``--bank-size``)
EXACT_SIZES = (4096, 16384, 65536)
#: P-AUROC an approximate search may leave to the full bank (mean over the sets)
TOLERANCE = 0.005
#: (kind, parameter) pairs tried over every training patch
VARIANTS = [("ivf", 1), ("ivf", 8), ("hnsw", 16), ("hnsw", 64)]
HNSW_LINKS = 32
SPEED_IMAGES = 64


class FaissBank(MemoryBank):
    """A memory bank searched through an approximate faiss index (benchmark only: squared L2
    distances from ``index.search``, no leave-one-out groups)."""

    def __init__(self, bank: torch.Tensor, index: Any):
        super().__init__(bank)
        self.index = index

    def distances(self, rows: torch.Tensor, query_groups: torch.Tensor | None = None,
                  bank_groups: torch.Tensor | None = None) -> torch.Tensor:
        if query_groups is not None:
            raise ValueError("an approximate bank cannot exclude rows")
        d2, _ = self.index.search(rows.float().contiguous().numpy(), 1)
        return torch.from_numpy(d2[:, 0]).clamp_(min=0).sqrt_()


def build_index(kind: str, rows: np.ndarray, seed: int) -> Any:
    """An IVF-Flat (``nlist`` ≈ 4·√N, a power of two; k-means on at most 64 rows a list, 10
    iterations) or HNSW-Flat (32 links) index over ``rows`` ``(N, C)`` float32."""
    import faiss

    d = rows.shape[1]
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_LINKS)
        index.add(rows)
        return index
    nlist = 2 ** round(math.log2(4 * math.sqrt(len(rows))))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
    index.cp.niter, index.cp.max_points_per_centroid, index.cp.seed = 10, 64, seed
    index.train(rows)
    index.add(rows)
    return index


def train_rows(det: Any, paths: list[Path]) -> torch.Tensor:
    """Every training patch's feature row ``(N·h·w, C)``, rounded through float16 as the fit
    keeps its candidates."""
    chunks = []
    for feats in det.inputs.features(det.model.features, paths, "train features"):
        chunks.append(feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).half())
    return torch.cat(chunks).float()


def measure(det: Any, test: list[Any], speed_images: torch.Tensor) -> dict[str, Any]:
    from costfilter.speed import throughput

    t0 = time.perf_counter()
    ev = det.evaluate(test)
    m = ev.mean
    return {"image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"], "pixel_ap": m["pixel_ap"],
            "aupro": m["aupro"], "test_s": time.perf_counter() - t0, "throughput": throughput(det, speed_images)}


def run_set(category: Path, seed: int) -> dict[str, Any]:
    import faiss

    from costfilter.api import Detector

    faiss.omp_set_num_threads(torch.get_num_threads())
    samples = load_samples([str(category)])
    train, test = split_of(samples, "train"), split_of(samples, "test")
    cfg = DetectorConfig(seed=seed)
    speed_images = load_tensors([s.path for s in test[:SPEED_IMAGES]], cfg.features.image_size)
    rows = []
    for size in EXACT_SIZES[::-1]:  # the default last: its model is the one the indexes go into
        cfg = DetectorConfig(seed=seed)
        cfg.memory.bank_size = size
        print(f"{category.name}: exact, bank {size}", flush=True)
        t0 = time.perf_counter()
        det = Detector(cfg, progress=False).fit(train)
        rows.insert(0, dict(search="exact", param=size, rows=det.state.bank_size, build_s=time.perf_counter() - t0,
                            **measure(det, test, speed_images)))
    default = det.model.memory
    with torch.inference_mode():
        every = train_rows(det, [s.path for s in train])
    array = every.numpy()
    built: dict[str, tuple[Any, float]] = {}
    for kind, param in VARIANTS:
        if kind not in built:
            t0 = time.perf_counter()
            built[kind] = (build_index(kind, array, seed), time.perf_counter() - t0)
        index, build_s = built[kind]
        if kind == "ivf":
            index.nprobe = param
        else:
            index.hnsw.efSearch = param
        print(f"{category.name}: {kind} {param} over {len(array)} rows", flush=True)
        det.model.memory = FaissBank(every, index)
        rows.append(dict(search=kind, param=param, rows=len(array), build_s=build_s,
                         **measure(det, test, speed_images)))
    det.model.memory = default
    return {"n_train": len(train), "n_test": len(test), "rows": rows}


def full_bank_reference(path: Path) -> dict[str, Any]:
    """The exact search over every patch, per set, from the memory-bank benchmark's pixel rows."""
    p = json.loads(path.read_text())
    out = {}
    for cat, runs in p["pixel"].items():
        full = max(runs, key=lambda r: r["bank_size"])
        m = full["mean"]
        out[cat] = {"rows": full["bank_size"], "pixel_auroc": m["pixel_auroc"], "image_auroc": m["image_auroc"],
                    "pixel_ap": m["pixel_ap"], "aupro": m["aupro"],
                    "model_over_backbone": full["throughput"]["model_over_backbone"]}
    return {"source": str(path), "commit": p["environment"]["git_commit"], "per_set": out}


def run(json_out: Path, root: Path, full_bank: Path, seed: int = 0, force: bool = False) -> dict[str, Any]:
    reference = full_bank_reference(full_bank)  # read first: a missing file stops before the long part
    sets = {cat.name: run_set(cat, seed) for cat in find_categories(root)}
    payload = {"benchmark": "bank_search", "seed": seed, "data_root": str(root), "speed_rule": SPEED_RULE,
               "tolerance": TOLERANCE, "hnsw_links": HNSW_LINKS, "sets": sets, "full_bank": reference,
               "verdict": verdict(sets, reference)}
    write_json(json_out, payload, force)
    print(table(payload))
    return payload


def _label(r: dict[str, Any]) -> str:
    return {"exact": f"exact, bank {r['param']}", "ivf": f"IVF nprobe {r['param']}", "hnsw": f"HNSW ef {r['param']}"}[r["search"]]


def verdict(sets: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Per search variant: its mean P-AUROC, its gap to the full bank's mean, its slowest speed
    ratio, and whether it passes both parts of the rule."""
    full = float(np.mean([reference["per_set"][s]["pixel_auroc"] for s in sets]))
    out: dict[str, Any] = {"full_bank_mean_pixel_auroc": full, "variants": {}}
    labels = [_label(r) for r in next(iter(sets.values()))["rows"]]
    for i, label in enumerate(labels):
        mean = float(np.mean([s["rows"][i]["pixel_auroc"] for s in sets.values()]))
        slowest = min(s["rows"][i]["throughput"]["model_over_backbone"] for s in sets.values())
        out["variants"][label] = {"mean_pixel_auroc": mean, "gap": full - mean, "slowest_ratio": slowest,
                                  "passes": bool(full - mean <= TOLERANCE and slowest >= SPEED_RULE)}
    passing = [k for k, v in out["variants"].items() if v["passes"]]
    out["chosen"] = passing[0] if passing else f"exact, bank {EXACT_SIZES[0]} (the default)"
    return out


def table(p: dict[str, Any]) -> str:
    """README table: per set and search, rows, build s, accuracy, speed against the backbone."""
    head = ["set", "search", "rows", "fit or index build s", "I-AUROC", "P-AUROC", "P-AP", "AUPRO",
            "images/s (batch 32)", "÷ backbone"]
    out = []
    for cat, s in p["sets"].items():
        for r in s["rows"]:
            t = r["throughput"]
            out.append([cat, _label(r), r["rows"], f"{r['build_s']:.0f}", f"{r['image_auroc']:.3f}",
                        f"{r['pixel_auroc']:.3f}", f"{r['pixel_ap']:.3f}", f"{r['aupro']:.3f}",
                        f"{t['model_images_per_s']:.1f}", f"{t['model_over_backbone']:.2f}"])
        f = p["full_bank"]["per_set"][cat]
        out.append([cat, "exact, every patch (memory_bank.json)", f["rows"], "—", f"{f['image_auroc']:.3f}",
                    f"{f['pixel_auroc']:.3f}", f"{f['pixel_ap']:.3f}", f"{f['aupro']:.3f}", "—",
                    f"{f['model_over_backbone']:.2f}"])
    v = p["verdict"]
    summary = format_table(["search", "mean P-AUROC", "gap to every patch", "slowest ÷ backbone", "passes"],
                           [[k, f"{x['mean_pixel_auroc']:.3f}", f"{x['gap']:+.3f}", f"{x['slowest_ratio']:.2f}",
                             "yes" if x["passes"] else "no"] for k, x in v["variants"].items()])
    return (format_table(head, out) + "\n\n" + summary +
            f"\n\nRule: an approximate search replaces exact search if scoring stays ≥ {p['speed_rule']:g}× the "
            f"backbone on every set and mean P-AUROC comes within {p['tolerance']:g} of every patch searched "
            f"exactly ({v['full_bank_mean_pixel_auroc']:.3f}). Chosen: **{v['chosen']}**.")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/bank_search.json"))
    ap.add_argument("--full-bank", type=Path, default=Path("benchmarks/results/memory_bank.json"),
                    help="the memory-bank benchmark's JSON, whose 'every patch' rows are the accuracy to reach")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run(a.json, a.data, a.full_bank, force=a.force)
