"""INT8 backbone (issue 32): post-training quantisation of the exported memory bank's backbone,
against the float32 export, on the shared masked sets.

    python -m benchmarks.int8 [--data ../shared/data] [--json benchmarks/results/int8.json]

Per set: fit the default memory bank; export it in float32 and with its backbone quantised to
INT8 (onnxruntime, static, QDQ): the dense convolutions only or all of them, each with min/max or
percentile calibration on at most 64 good training images. Which variant the set's INT8 row
uses is chosen without labels: the one whose scores on good training images left out of
calibration (all of them when there are too few to leave any out) move least from float32's, as
a share of the image threshold. Every variant's test numbers are reported; a variant is *kept*
only when every test decision equals the float32 export's and I-AUROC and AUPRO move by at most
0.005. Speed: one raw image at a time (the service's case), float32 and INT8 files in
the same run, with the backbone alone (eager, float32) as the reference.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from costfilter.api import Detector
from costfilter.config import DetectorConfig
from costfilter.data import load_dataset, read_image, split_of
from costfilter.evaluation import evaluate
from costfilter.export import OnnxDetector, export_onnx
from costfilter.export.quantize import METHODS, SCOPES, spread
from costfilter.tables import format_table

from .common import write_json
from .deploy import _backbone_batch1, _latencies, _summary
from .masked import find_categories

#: a variant is kept only within these of float32 (issue 32)
TOLERANCE = 0.005
METRICS = ("image_auroc", "aupro", "pixel_ap")
#: INT8 variants: which convolutions × how their activation ranges are calibrated
VARIANTS = [f"{scope}-{method}" for scope in SCOPES for method in METHODS]


class Scored:
    """:func:`costfilter.evaluation.evaluate`'s view of an exported model; keeps each decision."""

    zero_shot = False
    seed = 0

    def __init__(self, model: OnnxDetector):
        self.model = model
        self.decisions: dict[str, str] = {}

    def scored(self, source: Sequence[Path], desc: str) -> Iterator[tuple[list[str], list[tuple[int, int]],
                                                                         list[torch.Tensor], list[float]]]:
        for i in range(0, len(source), 16):
            preds = self.model.predict(list(source[i : i + 16]))
            self.decisions.update({p.path: p.decision for p in preds})
            yield ([p.path for p in preds], [p.size for p in preds],
                   [torch.from_numpy(p.anomaly_map) for p in preds], [p.score for p in preds])


def _scores(model: OnnxDetector, files: Sequence[Path]) -> np.ndarray:
    return np.array([p.score for p in model.predict(list(files))])


def run_category(cat: Path, workdir: Path, cfg: DetectorConfig) -> dict[str, Any]:
    """Fit ``cfg`` on the set at ``cat``, export it in float32 and INT8, and measure every variant."""
    samples = load_dataset(cat)
    det = Detector(cfg, progress=False).fit(samples)
    size = det.config.features.image_size
    train = sorted(s.path for s in split_of(samples, "train"))
    test = split_of(samples, "test")
    calibration = spread(train)
    # Fidelity images: good training images left out of calibration (all of them when too few).
    fidelity_files = spread([p for p in train if p not in set(calibration)] or train)
    fp32_path = workdir / f"{cat.name}-fp32.onnx"
    export_onnx(det, fp32_path, force=True)
    files = {"fp32": fp32_path}
    export_s: dict[str, float] = {}
    for variant in VARIANTS:
        scope, method = variant.split("-")
        files[variant] = workdir / f"{cat.name}-int8-{variant}.onnx"
        t0 = time.perf_counter()
        export_onnx(det, files[variant], force=True, int8=calibration, int8_calibration=method, int8_scope=scope)
        export_s[variant] = time.perf_counter() - t0
    models = {k: OnnxDetector(p) for k, p in files.items()}
    sample = [read_image(s.path) for s in test[: min(40, len(test))]]
    variants: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        view = Scored(model)
        ev = evaluate(view, test, size)
        variants[name] = {"metrics": {k: ev.mean[k] for k in METRICS}, "decisions": view.decisions,
                          "batch1": _summary(_latencies(lambda x, m=model: m.predict([x]), sample)),
                          "mb": files[name].stat().st_size / 1e6}
    base = variants["fp32"]
    # Median score change on good images (no label used), as a share of the image threshold:
    # training images sit in the bank, so their own scores are near zero and a change relative
    # to them would say little about decisions.
    reference, threshold = _scores(models["fp32"], fidelity_files), det.require_fitted().image
    for name in VARIANTS:
        v = variants[name]
        v["export_s"] = export_s[name]
        change = np.abs(_scores(models[name], fidelity_files) - reference)
        v["fidelity_good"] = float(np.median(change) / threshold)
        v["same_decisions"] = sum(v["decisions"][k] == d for k, d in base["decisions"].items())
        v["delta"] = {k: v["metrics"][k] - base["metrics"][k] for k in METRICS}
        v["kept"] = (v["same_decisions"] == len(test)
                     and all(abs(v["delta"][k]) <= TOLERANCE for k in ("image_auroc", "aupro")))
        v["speedup"] = v["batch1"]["images_per_s"] / base["batch1"]["images_per_s"]
    chosen = min(VARIANTS, key=lambda m: variants[m]["fidelity_good"])
    for v in variants.values():
        del v["decisions"]
    row = {"category": cat.name, "n_train": len(train), "n_test": len(test), "calibration_images": len(calibration),
           "fidelity_images": len(fidelity_files), "chosen": chosen, "variants": variants,
           "backbone_batch1": _backbone_batch1(det, sample)}
    c = variants[chosen]
    print(f"  {cat.name}: INT8 ({chosen}) decisions {c['same_decisions']}/{len(test)}, ΔI-AUROC "
          f"{c['delta']['image_auroc']:+.4f}, ΔAUPRO {c['delta']['aupro']:+.4f}, {c['speedup']:.2f}× float32 speed, "
          f"{'kept' if c['kept'] else 'not kept'}", flush=True)
    return row


def int8_table(p: dict[str, Any]) -> str:
    """README table: every variant's test numbers, the label-free choice marked."""
    head = ["set", "variant", "I-AUROC", "AUPRO", "P-AP", "same decisions as float32",
            "score change on good training images (median, of the threshold)", "images/s (batch 1, raw image in)",
            "× float32", "file MB", "kept"]
    rows = []
    for r in p["rows"]:
        for name, v in r["variants"].items():
            m = v["metrics"]
            label = "float32" if name == "fp32" else f"INT8 {name}" + (" (chosen)" if name == r["chosen"] else "")
            rows.append([r["category"], label, f"{m['image_auroc']:.3f}", f"{m['aupro']:.3f}", f"{m['pixel_ap']:.3f}",
                         "–" if name == "fp32" else f"{v['same_decisions']}/{r['n_test']}",
                         "–" if name == "fp32" else f"{v['fidelity_good']:.1e}",
                         f"{v['batch1']['images_per_s']:.1f}", "1.00" if name == "fp32" else f"{v['speedup']:.2f}",
                         f"{v['mb']:.1f}", "–" if name == "fp32" else ("yes" if v["kept"] else "no")])
    backbone = ", ".join(f"{r['category']} {r['backbone_batch1']['images_per_s']:.0f}" for r in p["rows"])
    return (format_table(head, rows) + f"\n\nINT8 variants: dense = only the dense convolutions quantised (depthwise "
            f"ones stay float32), all = every backbone convolution; minmax / percentile = how activation ranges are "
            f"calibrated. Backbone alone (eager, float32, batch 1) in the same run, images/s: "
            f"{backbone}. Kept: every test decision equal to float32's and |ΔI-AUROC|, |ΔAUPRO| ≤ {TOLERANCE}.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/int8.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cat in find_categories(a.data):
            rows.append(run_category(cat, Path(tmp), DetectorConfig(seed=a.seed)))
    payload = {"benchmark": "int8", "seed": a.seed, "data_root": str(a.data), "tolerance": TOLERANCE, "rows": rows}
    write_json(a.json, payload, a.force)
    print(int8_table(payload))


if __name__ == "__main__":
    main()
