"""Deployment benchmarks: ONNX export parity and speed on real masked data, and a bounded
loopback load test of the inspection service's ``POST /predict``."""

from __future__ import annotations

import importlib.util
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from costfilter.api import Detector
from costfilter.config import DetectorConfig
from costfilter.data import load_dataset, read_image, split_of
from costfilter.data.imageio import resize_image, to_tensor
from costfilter.metrics import image_metrics
from costfilter.tables import format_table

from .common import write_json
from .masked import find_categories
from .service import LOOPBACK, free_port, start_server


def _latencies(fn: Callable[[Any], Any], items: Sequence[Any], warmup: int = 2) -> list[float]:
    for x in items[:warmup]:
        fn(x)
    out = []
    for x in items:
        t0 = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t0)
    return out


def _summary(lat: Sequence[float]) -> dict[str, float]:
    q = np.quantile(np.asarray(lat) * 1000.0, [0.5, 0.95])
    return {"images_per_s": len(lat) / sum(lat), "p50_ms": float(q[0]), "p95_ms": float(q[1])}


def _backbone_batch1(det: Detector, images: Sequence[np.ndarray]) -> dict[str, float]:
    """The backbone alone on ``images`` already resized, one at a time: the same run's reference."""
    bb = det.model.features
    resized = [to_tensor([resize_image(x, det.config.features.image_size)]) for x in images]
    with torch.inference_mode():
        return _summary(_latencies(lambda x: bb.backbone(bb.normalise(x)), resized))


def _export_case(name: str, cfg: DetectorConfig, samples: list, workdir: Path) -> dict[str, Any]:
    from costfilter.export import OnnxDetector, compare_predictions, export_onnx

    t0 = time.perf_counter()
    det = Detector(cfg, progress=False).fit(samples)
    fit_s = time.perf_counter() - t0
    path = workdir / f"{name}-{cfg.method}.onnx"
    t0 = time.perf_counter()
    export_onnx(det, path, force=True)
    export_s = time.perf_counter() - t0
    onnx_det = OnnxDetector(path)
    test = split_of(samples, "test")
    images = [read_image(s.path) for s in test]
    labels = [s.label for s in test]
    eager, exported = det.predict(images), onnx_det.predict(images)
    parity = compare_predictions(eager, exported)
    auroc = {k: image_metrics([p.score for p in preds], labels)["image_auroc"]
             for k, preds in (("eager", eager), ("onnx", exported))}
    # Raw decoded image → map + score, one image at a time (the service's case), both runtimes;
    # and the backbone alone on already resized images, in the same run.
    sample = images[: min(40, len(images))]
    eager_lat = _summary(_latencies(lambda x: det.predict([x]), sample))
    onnx_lat = _summary(_latencies(lambda x: onnx_det.predict([x]), sample))
    backbone = _backbone_batch1(det, sample)
    row = {"category": name, "method": cfg.method, "n_test": len(test), "fit_s": fit_s, "export_s": export_s,
           "onnx_mb": path.stat().st_size / 1e6, **parity, "image_auroc_eager": auroc["eager"],
           "image_auroc_onnx": auroc["onnx"], "eager": eager_lat, "onnx": onnx_lat, "backbone": backbone}
    if importlib.util.find_spec("openvino") is not None:  # the same file through Intel's runtime
        vino_det = OnnxDetector(path, runtime="openvino")
        vino = vino_det.predict(images)
        row["openvino_parity"] = compare_predictions(eager, vino)
        row["image_auroc_openvino"] = image_metrics([p.score for p in vino], labels)["image_auroc"]
        row["openvino"] = _summary(_latencies(lambda x: vino_det.predict([x]), sample))
    print(f"  {name} {cfg.method}: parity score {parity['max_score_rel_diff']:.1e}, map "
          f"{parity['max_map_rel_diff']:.1e}, decisions {parity['decision_agreement']:.0%}; "
          f"eager {eager_lat['images_per_s']:.1f} / onnx {onnx_lat['images_per_s']:.1f} images/s", flush=True)
    return row


def run_export(json_out: Path, root: Path, *, cf_budget_s: float = 60.0, seed: int = 0, force: bool = False
               ) -> dict[str, Any]:
    """Export parity and latency: the memory bank on every category under ``root``, plus DFM and
    CostFilter-AD (training bounded by ``cf_budget_s``) on the category with the fewest training
    images (the quickest to fit)."""
    cats = find_categories(root)
    smallest = min(cats, key=lambda c: len(list((c / "train" / "good").iterdir())))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cat in cats:
            samples = load_dataset(cat)
            methods = ["memory"] + (["dfm", "costfilter"] if cat == smallest else [])
            for method in methods:
                cfg = DetectorConfig(method=method, seed=seed)
                cfg.costfilter.training.time_budget_s = cfg.dfm.training.time_budget_s = cf_budget_s
                rows.append(_export_case(cat.name, cfg, samples, Path(tmp)))
    payload = {"benchmark": "export", "seed": seed, "data_root": str(root), "rows": rows}
    write_json(json_out, payload, force)
    print(export_table(payload))
    return payload


def export_table(p: dict[str, Any]) -> str:
    """README table of the export benchmark."""
    head = ["set", "method", "test images", "max score diff (rel.)", "max map diff (of peak)", "same decisions",
            "I-AUROC eager / ONNX", "images/s eager / ONNX (batch 1, raw image in)", "p95 ms eager / ONNX",
            "backbone alone images/s (batch 1)"]
    rows = [[r["category"], r["method"], r["n_test"], f"{r['max_score_rel_diff']:.1e}", f"{r['max_map_rel_diff']:.1e}",
             f"{r['decision_agreement']:.1%}", f"{r['image_auroc_eager']:.3f} / {r['image_auroc_onnx']:.3f}",
             f"{r['eager']['images_per_s']:.1f} / {r['onnx']['images_per_s']:.1f}",
             f"{r['eager']['p95_ms']:.0f} / {r['onnx']['p95_ms']:.0f}", f"{r['backbone']['images_per_s']:.1f}"]
            for r in p["rows"]]
    table = format_table(head, rows)
    vino = [r for r in p["rows"] if "openvino" in r]
    if vino:
        head = ["set", "method", "test images", "max score diff vs eager (rel.)", "max map diff (of peak)",
                "same decisions", "I-AUROC eager / OpenVINO", "images/s ONNX Runtime / OpenVINO (batch 1)",
                "p95 ms ONNX Runtime / OpenVINO"]
        rows = [[r["category"], r["method"], r["n_test"], f"{r['openvino_parity']['max_score_rel_diff']:.1e}",
                 f"{r['openvino_parity']['max_map_rel_diff']:.1e}", f"{r['openvino_parity']['decision_agreement']:.1%}",
                 f"{r['image_auroc_eager']:.3f} / {r['image_auroc_openvino']:.3f}",
                 f"{r['onnx']['images_per_s']:.1f} / {r['openvino']['images_per_s']:.1f}",
                 f"{r['onnx']['p95_ms']:.0f} / {r['openvino']['p95_ms']:.0f}"] for r in vino]
        table += "\n\nThe same exported files run by OpenVINO (`--runtime openvino`, float32):\n\n" + format_table(head, rows)
    return table


# ---------------------------------------------------------------------------------- load test
def _load(url: str, bodies: Sequence[tuple[str, bytes]], n: int, concurrency: int, time_limit_s: float
          ) -> dict[str, Any]:
    """``n`` POSTs over ``concurrency`` client threads, stopping early after ``time_limit_s``."""
    import httpx

    lat: list[float] = []
    errors: list[str] = []
    counter = iter(range(n))
    lock = threading.Lock()
    deadline = time.monotonic() + time_limit_s

    def work() -> None:
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                name, data = bodies[i % len(bodies)]
                t0 = time.perf_counter()
                try:
                    r = client.post(url, files={"file": (name, data, "image/png")})
                    ok = r.status_code == 200
                except httpx.HTTPError as exc:
                    ok, r = False, exc
                with lock:
                    (lat.append(time.perf_counter() - t0) if ok else errors.append(str(r)[:200]))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = np.quantile(np.asarray(lat) * 1000, [0.5, 0.95, 0.99]) if lat else [float("nan")] * 3
    return {"concurrency": concurrency, "requests": len(lat), "errors": len(errors), "wall_s": wall,
            "requests_per_s": len(lat) / wall, "p50_ms": float(q[0]), "p95_ms": float(q[1]), "p99_ms": float(q[2]),
            "mean_ms": statistics.fmean(lat) * 1000 if lat else float("nan"), "error_examples": errors[:3]}


def run_load_test(json_out: Path, category: Path, *, requests: int = 120, concurrency: Sequence[int] = (1, 4),
                  time_limit_s: float = 120.0, seed: int = 0, force: bool = False) -> dict[str, Any]:
    """Fit the default memory bank on ``category``, serve it (checkpoint, then its ONNX export) on
    127.0.0.1 and measure ``POST /predict`` with the category's test images as uploads."""
    import httpx

    from costfilter.export import export_onnx

    samples = load_dataset(category)
    test = split_of(samples, "test")
    bodies = [(s.path.name, s.path.read_bytes()) for s in test]
    cfg = DetectorConfig(seed=seed)
    det = Detector(cfg, progress=False).fit(samples)
    # In-process reference, same run: backbone alone and the whole model on one raw image.
    sample = [read_image(s.path) for s in test[:30]]
    backbone = _backbone_batch1(det, sample)
    in_process = _summary(_latencies(lambda x: det.predict([x]), sample))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, onnx_path = Path(tmp) / "model.ckpt", Path(tmp) / "model.onnx"
        det.save(ckpt)
        export_onnx(det, onnx_path)
        for model in (ckpt, onnx_path):
            port = free_port()
            proc = start_server(model, Path(tmp) / f"store-{model.suffix[1:]}", port)
            try:
                url = f"http://{LOOPBACK}:{port}/predict"
                _load(url, bodies, 3, 1, 60)  # warm-up
                for c in concurrency:
                    r = _load(url, bodies, requests, c, time_limit_s)
                    r["model"] = model.suffix[1:]
                    runs.append(r)
                    print(f"  {model.suffix[1:]} concurrency {c}: {r['requests_per_s']:.1f} req/s, p50 "
                          f"{r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms, {r['errors']} errors", flush=True)
                stored = httpx.get(f"http://{LOOPBACK}:{port}/health").json()["predictions"]
            finally:
                proc.terminate()
                proc.wait(30)
            runs[-1]["stored_predictions"] = stored
    payload = {"benchmark": "load_test", "seed": seed, "category": str(category), "image_size":
               cfg.features.image_size, "upload_images": len(bodies),
               "upload_mean_kb": float(np.mean([len(b) for _, b in bodies]) / 1e3), "runs": runs,
               "in_process_batch1": in_process, "backbone_batch1": backbone}
    write_json(json_out, payload, force)
    print(load_table(payload))
    return payload


def load_table(p: dict[str, Any]) -> str:
    """README table of the load test."""
    head = ["model file", "clients", "requests", "errors", "requests/s", "p50 ms", "p95 ms", "p99 ms"]
    rows = [[r["model"], r["concurrency"], r["requests"], r["errors"], f"{r['requests_per_s']:.1f}",
             f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}", f"{r['p99_ms']:.0f}"] for r in p["runs"]]
    ref = (f"\n\nSame run, in process, one raw image at a time: whole model "
           f"{p['in_process_batch1']['images_per_s']:.1f} images/s (p50 {p['in_process_batch1']['p50_ms']:.0f} ms); "
           f"backbone alone {p['backbone_batch1']['images_per_s']:.1f} images/s. Uploads: "
           f"{p['upload_images']} test PNGs of {Path(p['category']).name}, {p['upload_mean_kb']:.0f} kB on average.")
    return format_table(head, rows) + ref


