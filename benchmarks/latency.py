"""Batch-1 latency per stage (issue 32): where one image's inspection spends its time, for the
memory bank and CostFilter-AD, run eagerly, by ONNX Runtime and by OpenVINO.

    python -m benchmarks.latency [--category ../shared/data/mpdd/metal_plate] [--images 60]

In process, each test image (an upload's bytes) goes through the service's own ``Inspector``,
whose stage timings are collected: decode, model (the runtime's ``predict`` on the decoded image:
resize, forward pass, decision), draw (regions, mask, the map's grey levels), encode (the mask's
and map's PNGs) and store (files written and synced, row committed). The model stage is then split by timing the
resize alone, the runtime on the image already resized, and the decision alone.

Through the service: ``costfilter serve`` on 127.0.0.1, one client sending the same uploads one
after another; the request's p50/p99, and the server's own stage means read from ``/metrics``
(so what is left is HTTP and the web framework). The backbone alone at batch 1 is measured in
the same run. The in-process side fits, loads and scores on the model thread, as the service
does (``costfilter/model_thread.py``), with libgomp's default spin-wait: its model time is the
library's; ``costfilter serve`` shortens the spin (``model_thread.spin_for_service``). Writes benchmarks/results/latency.json. Needs a quiet machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from costfilter import model_thread
from costfilter.api import Detector
from costfilter.config import DetectorConfig
from costfilter.data import load_dataset, read_image, split_of
from costfilter.data.imageio import decode, resize_image
from costfilter.decisions import decided_prediction
from costfilter.serve.inspection import Inspector, Item, Scorer
from costfilter.serve.metrics import STAGES
from costfilter.serve.store import HistoryStore
from costfilter.tables import format_table

from .common import write_json
from .deploy import _backbone_batch1, _latencies, _load
from .service import LOOPBACK, free_port, start_server

WARMUP = 3


def _stats(seconds: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {"p50_ms": float(np.quantile(ms, 0.5)), "p99_ms": float(np.quantile(ms, 0.99)),
            "mean_ms": float(ms.mean()), "n": len(ms)}


def in_process(scorer: Scorer, bodies: Sequence[tuple[str, bytes]], store_dir: Path) -> dict[str, Any]:
    """The Inspector's stages on each upload, one at a time, and the model stage split."""
    inspector = Inspector(scorer, HistoryStore(store_dir), model_name="bench")
    for name, data in bodies[:WARMUP]:
        inspector.inspect([Item(name, data)])
    stages: dict[str, list[float]] = defaultdict(list)
    inspector.on_stage.append(lambda stage, s: stages[stage].append(s))
    total = []
    masks, greys = [], []
    for name, data in bodies:
        t0 = time.perf_counter()
        done = inspector.inspect([Item(name, data)])[0]
        total.append(time.perf_counter() - t0)
        if isinstance(done, Exception):
            raise SystemExit(f"{name}: {done}")
        masks.append(done.mask)
        greys.append(done.grey)
    size = scorer.config.features.image_size
    decoded = [decode(Path(name), data, size=inspector.decode_size)[0] for name, data in bodies]
    resized = [resize_image(x, size) for x in decoded]
    pred = scorer.predict(resized[:1])[0]
    t = inspector.thresholds
    split = {
        "resize": _stats(_latencies(lambda x: resize_image(x, size), decoded, WARMUP)),
        "forward + decision": _stats(_latencies(lambda x: scorer.predict([x]), resized, WARMUP)),
        "decision": _stats(_latencies(lambda p: decided_prediction("x", (size, size), torch.from_numpy(p.anomaly_map),
                                                              p.score, t), [pred] * len(resized), WARMUP)),
    }
    return {"stages": {k: _stats(stages[k]) for k in STAGES}, "split": split, "inspect": _stats(total),
            "png": png_encoders(masks, greys)}


def png_encoders(masks: Sequence[np.ndarray], greys: Sequence[np.ndarray]) -> dict[str, Any]:
    """The service's grey PNG encoder (``viz.encode_png``) against Pillow's at its fastest
    setting here (level ``PNG_LEVEL``, run-length strategy), on this run's masks and maps: p50
    ms and mean KB each. Both must decode to the same pixels."""
    import io
    import zlib

    from PIL import Image

    from costfilter.viz import PNG_LEVEL, encode_png

    def pillow(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG", compress_level=PNG_LEVEL, compress_type=zlib.Z_RLE)
        return buf.getvalue()

    out: dict[str, Any] = {}
    for kind, arrays in (("mask", masks), ("map", greys)):
        for name, encode in (("pillow", pillow), ("costfilter", encode_png)):
            files = [encode(a) for a in arrays]
            if not all(np.array_equal(np.asarray(Image.open(io.BytesIO(f))), a) for f, a in zip(files, arrays)):
                raise SystemExit(f"{name}'s {kind} PNGs do not decode to the pixels encoded")
            out[f"{kind} {name}"] = _stats(_latencies(encode, arrays, WARMUP)) | {
                "mean_kb": float(np.mean([len(f) for f in files]) / 1024), "shape": list(arrays[0].shape)}
    return out


def _stage_sums(metrics_text: str) -> dict[str, tuple[float, float]]:
    """``stage → (sum of seconds, count)`` from a /metrics scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for fam in text_string_to_metric_families(metrics_text):
        if fam.name == "costfilter_inspection_stage_seconds":
            for s in fam.samples:
                if s.name.endswith("_sum"):
                    out[s.labels["stage"]][0] = s.value
                elif s.name.endswith("_count"):
                    out[s.labels["stage"]][1] = s.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def through_service(model: Path, bodies: Sequence[tuple[str, bytes]], store_dir: Path, runtime: str | None
                    ) -> dict[str, Any]:
    """Sequential uploads to ``costfilter serve``: request p50/p99 and the server's stage means."""
    import httpx

    port = free_port()
    proc = start_server(model, store_dir, port, ["--runtime", runtime] if runtime else [])
    base = f"http://{LOOPBACK}:{port}"
    try:
        _load(f"{base}/predict", bodies, WARMUP, 1, 60)
        before = _stage_sums(httpx.get(f"{base}/metrics").text)
        r = _load(f"{base}/predict", bodies, len(bodies), 1, 600)
        after = _stage_sums(httpx.get(f"{base}/metrics").text)
    finally:
        proc.terminate()
        proc.wait(30)
    means = {k: 1000.0 * (after[k][0] - before.get(k, (0.0, 0.0))[0]) / max(1.0, after[k][1] - before.get(k, (0, 0))[1])
             for k in STAGES if k in after}
    return {"requests": r["requests"], "errors": r["errors"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
            "mean_ms": r["mean_ms"], "stage_mean_ms": means, "http_mean_ms": r["mean_ms"] - sum(means.values())}


def run(json_out: Path, category: Path, *, n_images: int, cf_budget_s: float, seed: int = 0,
        force: bool = False) -> dict[str, Any]:
    from costfilter.export import OnnxDetector, export_onnx

    samples = load_dataset(category)
    test = split_of(samples, "test")[:n_images]
    bodies = [(s.path.name, s.path.read_bytes()) for s in test]
    runtimes = ["eager", "onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])

    def measure() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        backbone: dict[str, Any] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for method in ("memory", "costfilter"):
                cfg = DetectorConfig(method=method, seed=seed)
                cfg.costfilter.training.time_budget_s = cf_budget_s
                det = Detector(cfg, progress=False).fit(samples)
                ckpt, onnx_path = Path(tmp) / f"{method}.ckpt", Path(tmp) / f"{method}.onnx"
                det.save(ckpt)
                export_onnx(det, onnx_path)
                backbone = _backbone_batch1(det, [read_image(s.path) for s in test])
                for runtime in runtimes:
                    scorer: Scorer = det if runtime == "eager" else OnnxDetector(onnx_path, runtime=runtime)
                    row: dict[str, Any] = {"method": method, "runtime": runtime}
                    row["in_process"] = in_process(scorer, bodies, Path(tmp) / f"store-{method}-{runtime}")
                    row["service"] = through_service(ckpt if runtime == "eager" else onnx_path, bodies,
                                                     Path(tmp) / f"served-{method}-{runtime}",
                                                     runtime if runtime == "openvino" else None)
                    model = row["in_process"]["stages"]["model"]["p50_ms"]
                    row["service_over_model"] = row["service"]["p50_ms"] / model
                    rows.append(row)
                    print(f"  {method} {runtime}: model p50 {model:.1f} ms, service p50 {row['service']['p50_ms']:.1f} ms "
                          f"({row['service_over_model']:.1f}×)", flush=True)
        return rows, backbone

    # Fitted, loaded and scored on the model thread, as the service does (costfilter/model_thread.py).
    rows, backbone = model_thread.run(measure)
    payload = {"benchmark": "latency", "seed": seed, "category": str(category), "images": len(bodies),
               "image_size": DetectorConfig().features.image_size, "costfilter_budget_s": cf_budget_s,
               "rows": rows, "backbone_batch1": backbone}
    write_json(json_out, payload, force)
    print(latency_table(payload))
    return payload


def latency_table(p: dict[str, Any]) -> str:
    """README table: p50 / p99 ms per stage, in process and through the service."""
    def pp(s: dict[str, float]) -> str:
        return f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f}"

    head = ["method", "runtime", *STAGES, "of model: resize", "forward + decision", "decision", "in process",
            "service", "service ÷ model (p50)", "service: HTTP mean ms"]
    rows = [[r["method"], r["runtime"], *(pp(r["in_process"]["stages"][k]) for k in STAGES),
             *(pp(r["in_process"]["split"][k]) for k in ("resize", "forward + decision", "decision")),
             pp(r["in_process"]["inspect"]), pp(r["service"]), f"{r['service_over_model']:.2f}×",
             f"{r['service']['http_mean_ms']:.1f}"] for r in p["rows"]]
    b = p["backbone_batch1"]
    text = (format_table(head, rows) + f"\n\np50 / p99 ms, one image at a time, {p['images']} test images of "
            f"{Path(p['category']).name} ({p['image_size']} px model). Backbone alone, same run: p50 "
            f"{b['p50_ms']:.1f} ms.")
    png = p["rows"][0]["in_process"].get("png")
    if png:
        def enc(k: str) -> str:
            return f"{png[k]['p50_ms']:.2f} ms, {png[k]['mean_kb']:.1f} KB"
        text += (f" Grey PNGs of the {p['rows'][0]['method']} model's masks ({png['mask pillow']['shape'][0]} px) "
                 f"and maps ({png['map pillow']['shape'][0]} px), p50 and mean size: Pillow (level 1, RLE) "
                 f"{enc('mask pillow')} and {enc('map pillow')}; ours (Up filter, RLE) "
                 f"{enc('mask costfilter')} and {enc('map costfilter')}.")
    return text


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--category", type=Path, default=Path("../shared/data/mpdd/metal_plate"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/latency.json"))
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--costfilter-budget", type=float, default=60.0, help="CostFilter-AD training seconds")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run(a.json, a.category, n_images=a.images, cf_budget_s=a.costfilter_budget, force=a.force)
