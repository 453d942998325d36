"""Robustness benchmark: hostile and careless inputs against the CLI and the service, each case
tried and checked for the right outcome (a one-line error, a refusal, or a correct answer), with
the peak memory of the process that handled it. Loopback only, bounded request counts.

    python -m benchmarks.robustness [--data ../shared/data/battery_weld/welding] [--force]

Writes benchmarks/results/robustness.json.

Cases: a 10,000 × 10,000 PNG through ``predict`` and through the service (refused by the pixel
limit, and scored with the limit raised); single-byte flips all over an exported ONNX file;
edited checkpoint headers; masks of every mode; service abuse (no key, foreign host, foreign
origin, oversized chunked upload, absurd query, foreign format); the December probe's cases that
need live processes, signals, a full disk or dropped privileges (:mod:`.probe_cases`), and the
peak memory of tiled scoring at 4, 9 and 40 MP; and the December line probe's cases L1–L22
(:mod:`.line_cases`: their regression tests, one row each).
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from costfilter.tables import format_table

from .common import write_json
from .line_cases import line_cases
from .probe_cases import case, probe_cases, run_cli, tiled_memory

HUGE = 10_000


def _huge_png(path: Path) -> Path:
    """A 10,000 × 10,000 RGB PNG: a grey field with a dark square, about 100 kB on disk."""
    img = Image.new("RGB", (HUGE, HUGE), (128, 128, 128))
    img.paste((20, 20, 20), (4000, 4000, 4600, 4600))
    img.save(path, optimize=False)
    return path


def run_robustness(json_out: Path, root: Path, *, flips: int = 300, seed: int = 0, force: bool = False) -> dict[str, Any]:
    """Run every case on a model fitted to the MVTec-layout category ``root``; print and write JSON."""
    from costfilter.api import Detector
    from costfilter.config import DetectorConfig
    from costfilter.export import OnnxDetector, export_onnx

    from .service import LOOPBACK, free_port, start_server

    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        det = Detector(DetectorConfig(seed=seed), progress=False).fit(root)
        model = tmp / "m.ckpt"
        det.save(model)
        huge = _huge_png(tmp / "huge.png")

        # 1. the huge PNG through predict: refused from its header, then scored with the limit raised
        r = run_cli(["predict", str(model), str(huge), "--out", str(tmp / "p1"), "-q"])
        cases.append(case("10000² PNG, predict (default 40 MP limit)", 1,  # an error row, exit status 1
                           int(r["rc"] == 1 and (tmp / "p1" / "results.csv").is_file()
                               and "over the limit" in (tmp / "p1" / "results.csv").read_text() and not r["traceback"]),
                           r["peak_rss_mb"], r["last"][:120]))
        r = run_cli(["predict", str(model), str(huge), "--out", str(tmp / "p2"), "-q", "--max-pixels", "200000000"])
        rec = json.loads((tmp / "p2" / "results.jsonl").read_text().splitlines()[0]) if r["rc"] == 0 else {}
        box = rec.get("regions", [{}])[0].get("box") if rec.get("regions") else None
        cases.append(case("10000² PNG, predict --max-pixels 200000000", 1,
                           int(r["rc"] == 0 and r["peak_rss_mb"] < 2048), r["peak_rss_mb"],
                           f"decision {rec.get('decision')}, score {rec.get('score')}, first region box {box}"))

        # 2. the huge PNG through the service
        data = huge.read_bytes()
        for label, extra in (("default 40 MP limit", []), ("--max-pixels 200000000", ["--max-pixels", "200000000"])):
            port = free_port()
            proc = start_server(model, tmp / f"store{len(extra)}", port, extra)
            try:
                import httpx

                resp = httpx.post(f"http://{LOOPBACK}:{port}/predict", files={"file": ("huge.png", data, "image/png")},
                                  timeout=300)
                hwm = _vm_hwm_mb(proc.pid)
                ok = resp.status_code == (400 if not extra else 200)
                cases.append(case(f"10000² PNG, service ({label})", 1, int(ok and hwm < 2048), hwm,
                                   f"{resp.status_code}: {resp.json().get('detail', resp.json().get('decision'))}"))
            finally:
                proc.terminate()
                proc.wait(30)

        # 3. byte flips all over an exported ONNX file
        onnx_path = tmp / "m.onnx"
        export_onnx(det, onnx_path)
        raw = onnx_path.read_bytes()
        rng = np.random.default_rng(seed)
        refused = 0
        positions = rng.choice(len(raw), size=min(flips, len(raw)), replace=False)
        for pos in positions:
            flipped = bytearray(raw)
            flipped[pos] ^= 1 << int(rng.integers(8))
            (tmp / "f.onnx").write_bytes(bytes(flipped))
            try:
                OnnxDetector(tmp / "f.onnx")
            except Exception as exc:  # every refusal must be our one-line error, counted below
                refused += int(type(exc).__name__ == "CheckpointError")
        cases.append(case("single-bit flips in an exported ONNX file", len(positions), refused, None,
                           f"{len(raw) / 1e6:.1f} MB file, positions drawn uniformly"))

        # 4. edited checkpoint headers and contents
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        with safe_open(str(model), framework="pt") as fh:
            meta = fh.metadata()
        tensors = load_file(str(model))
        edits = {"format_version 'two'": dict(meta, format_version="two"),
                 "format_version 1 (old hash rule)": dict(meta, format_version="1"),
                 "threshold edited": dict(meta, state=meta["state"].replace('"image":', '"image": 1e9, "x":', 1)),
                 "config edited": dict(meta, config=meta["config"].replace('"image_size": 256', '"image_size": 33'))}
        handled = 0
        for m in edits.values():
            save_file(tensors, str(tmp / "e.ckpt"), metadata=m)
            r = run_cli(["info", str(tmp / "e.ckpt")])
            handled += int(r["rc"] == 2 and r["last"].startswith("error: ") and not r["traceback"])
        (tmp / "t.ckpt").write_bytes(model.read_bytes()[: len(model.read_bytes()) // 2])
        r = run_cli(["info", str(tmp / "t.ckpt")])
        handled += int(r["rc"] == 2 and not r["traceback"])
        cases.append(case("edited or truncated checkpoints", len(edits) + 1, handled, None,
                           "each a one-line error, exit 2"))

        # 5. masks of every mode give the grey version's pixels
        from costfilter.data.imageio import read_mask

        grey = np.zeros((40, 60), np.uint8)
        grey[10:20, 20:40] = 255
        modes = ["L", "LA", "RGB", "RGBA", "P", "I;16", "1"]
        same = 0
        for mode in modes:
            img = Image.fromarray(grey)
            img = (Image.merge("LA", (img, Image.new("L", img.size, 255))) if mode == "LA"
                   else Image.fromarray(grey.astype(np.uint16) * 257) if mode == "I;16" else img.convert(mode))
            img.save(tmp / "mask.png")
            same += int(((read_mask(tmp / "mask.png") > 0) == (grey > 0)).all())
        cases.append(case("masks in every mode", len(modes), same, None, ", ".join(modes)))

        # 6. abuse of a running service with an API key
        port = free_port()
        proc = start_server(model, tmp / "store-guarded", port, [], env_extra={"COSTFILTER_API_KEY": "k"})
        try:
            cases.append(_service_abuse(port, (root / "train" / "good").iterdir().__next__().read_bytes()))
        finally:
            proc.terminate()
            proc.wait(30)

        # 7. the December probe's live cases, and tiled scoring's memory
        cases += probe_cases(tmp, model, root)
        cases += tiled_memory(tmp, model)
    # 8. the December line probe's cases L1-L22, through their regression tests
    cases += line_cases()

    payload = {"benchmark": "robustness", "seed": seed, "data": str(root), "cases": cases}
    write_json(json_out, payload, force)
    print(robustness_table(payload))
    return payload


def _service_abuse(port: int, png: bytes) -> dict[str, Any]:
    import httpx

    from .service import LOOPBACK

    url = f"http://{LOOPBACK}:{port}"
    key = {"Authorization": "Bearer k"}
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")

    def big_chunks():
        for _ in range(25):
            yield b"x" * 1_000_000

    checks = [
        ("no key", lambda c: c.get("/results").status_code == 401),
        ("wrong key", lambda c: c.get("/results", headers={"Authorization": "Bearer no"}).status_code == 401),
        ("health without key", lambda c: c.get("/health").status_code == 200),
        ("foreign Host", lambda c: c.get("/health", headers={"Host": "evil.example"}).status_code == 400),
        ("cross-origin POST", lambda c: c.post("/predict", files={"file": ("p.png", png, "image/png")},
                                                headers=dict(key, Origin="https://evil.example")).status_code == 403),
        ("25 MB chunked upload", lambda c: c.post("/predict", content=big_chunks(), headers=dict(
            key, **{"Content-Type": "multipart/form-data; boundary=b"})).status_code == 413),
        ("offset 10^20", lambda c: c.get("/results", params={"offset": 10**20}, headers=key).status_code == 422),
        ("GIF as octet-stream", lambda c: c.post("/predict", files={"file": ("g.bin", gif.getvalue(),
                                                  "application/octet-stream")}, headers=key).status_code == 400),
        ("nosniff on responses", lambda c: c.get("/health").headers.get("x-content-type-options") == "nosniff"),
        ("good upload with key", lambda c: c.post("/predict", files={"file": ("p.png", png, "image/png")},
                                                   headers=key).status_code == 200),
    ]
    failed = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for name, check in checks:
            try:
                passed = check(c)
            except httpx.HTTPError as exc:
                passed, name = False, f"{name} ({type(exc).__name__})"
            if not passed:
                failed.append(name)
    note = "; ".join(name for name, _ in checks) + (f" — NOT as intended: {'; '.join(failed)}" if failed else "")
    return case("service abuse (API key set)", len(checks), len(checks) - len(failed), None, note)


def _vm_hwm_mb(pid: int) -> float:
    """Peak resident memory of a running process (Linux ``VmHWM``), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def robustness_table(p: dict[str, Any]) -> str:
    """One row per case."""
    rows = [[c["case"], c["tried"], c["handled"], f"{c['peak_rss_mb']:.0f}" if c["peak_rss_mb"] else None, c["note"]]
            for c in p["cases"]]
    return format_table(["case", "tried", "handled as intended", "peak RSS MB", "what happened"], rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/battery_weld/welding"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/robustness.json"))
    ap.add_argument("--flips", type=int, default=300, help="byte flips tried on the exported ONNX file")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run_robustness(a.json, a.data, flips=a.flips, force=a.force)
