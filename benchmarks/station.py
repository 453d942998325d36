"""A line station on this machine: hot folder → inspection → history + outbox → a real Mosquitto
broker → a subscriber (issue 30).

    python -m benchmarks.station [--category ../shared/data/magnetic_tile/magnetic_tile] [--force]

Fits the default memory bank on the category's good training images, then, with the category's
test images as the parts a camera writes (each written under a hidden name and renamed into the
hot folder, as camera software does):

1. ``predict`` alone: ``costfilter predict`` over the test images (its scoring time), and the
   model and the backbone alone in-process, the yardsticks;
2. burst: every test image dropped at once; sustained images/s from the first file written to the
   last message received;
3. paced at 5, 10 and 20 parts a second: latency from the file closed in the hot folder (renamed
   into place, as camera software does) to its message received (p50/p99), beside the
   inspection's own time from the station's /metrics, and the line's goal at 10 parts/s
   (p50 ≤ inspection + 50 ms, p99 ≤ 2 × inspection + 100 ms);
4. the camera-stream path: a local HTTP MJPEG stream sending the same parts at 10 frames/s to a
   second station; latency from a frame sent to its message received;
5. outage: the broker stopped for ``--outage`` seconds while images keep arriving at 10 a second,
   then started; how fast the backlog drains, and whether every result arrived exactly once
   (the consumer de-duplicates by key; repeats are counted).

Writes benchmarks/results/station.json; the README table comes from it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from costfilter.api import Detector
from costfilter.config import DetectorConfig
from costfilter.data import load_dataset
from costfilter.speed import throughput
from costfilter.station.config import BACKOFF_MAX_S

from .common import load_tensors, write_json
from .mqtt import Broker, Subscriber
from .probe_cases import run_cli
from .service import LOOPBACK, free_port, start_server

TOPIC = "plant/bench/inspections"
#: the paces of the latency sweep (parts a second); the goal is read at GOAL_RATE
RATES = (5.0, 10.0, 20.0)
GOAL_RATE = 10.0


class Feeder:
    """Writes parts into the hot folder as a camera would, remembering when each landed."""

    def __init__(self, inbox: Path, images: list[Path]):
        self.inbox, self.images, self.n = inbox, images, 0
        self.written: dict[str, float] = {}

    def drop(self, prefix: str) -> str:
        src = self.images[self.n % len(self.images)]
        name = f"{prefix}-{self.n:05d}{src.suffix}"
        self.n += 1
        tmp = self.inbox / f".{name}.tmp"
        shutil.copyfile(src, tmp)
        tmp.rename(self.inbox / name)
        self.written[name] = time.time()
        return name

    def paced(self, prefix: str, rate: float, seconds: float | None = None, count: int | None = None) -> list[str]:
        names: list[str] = []
        t0 = time.monotonic()
        while (seconds is None or time.monotonic() - t0 < seconds) and (count is None or len(names) < count):
            names.append(self.drop(prefix))
            next_at = t0 + len(names) / rate
            time.sleep(max(0.0, next_at - time.monotonic()))
        return names


def _inspections(sub: Subscriber) -> list[dict]:
    """The inspection messages received (the sink also carries the station's drift alarms)."""
    return [m for m in sub.messages if m.get("kind") == "inspection"]


def _wait(sub: Subscriber, names: list[str], timeout: float) -> float:
    """Seconds until every name in ``names`` arrived (inf past ``timeout``)."""
    want = set(names)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if want <= {m["image"] for m in _inspections(sub)}:
            return time.monotonic() - t0
        time.sleep(0.02)
    return float("inf")


def _arrivals(sub: Subscriber) -> dict[str, float]:
    return {m["image"]: sub.arrival[m["key"]] for m in _inspections(sub)}


def _metric(text: str, name: str) -> float:
    """One unlabelled sample of a Prometheus text exposition (prometheus_client's own parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    return next((smp.value for fam in text_string_to_metric_families(text) for smp in fam.samples
                 if smp.name == name), float("nan"))


def _latency(names: list[str], written: dict[str, float], arrived: dict[str, float], rate: float, before: str,
             after: str) -> dict[str, Any]:
    """Latency of ``names`` (landed → message received) at ``rate``, with the station's own mean
    inspection time over the same parts (from /metrics) and the line's goal from it."""
    lat = np.array([arrived[n] - written[n] for n in names if n in arrived]) * 1000
    count = _metric(after, "costfilter_inspection_seconds_count") - _metric(before, "costfilter_inspection_seconds_count")
    inspect_ms = 1000 * (_metric(after, "costfilter_inspection_seconds_sum")
                         - _metric(before, "costfilter_inspection_seconds_sum")) / max(1.0, count)
    q50, q99 = (float(x) for x in np.quantile(lat, [0.5, 0.99]))
    goal50, goal99 = inspect_ms + 50, 2 * inspect_ms + 100
    return {"rate": rate, "images": len(names), "received": len(lat), "p50_ms": q50, "p99_ms": q99,
            "max_ms": float(lat.max()), "inspection_mean_ms": inspect_ms, "goal_p50_ms": goal50,
            "goal_p99_ms": goal99, "goal_met": bool(q50 <= goal50 and q99 <= goal99)}


def _latency_line(x: dict[str, Any], what: str = "files") -> str:
    return (f"{what} at {x['rate']:g}/s: latency p50 {x['p50_ms']:.0f} ms, p99 {x['p99_ms']:.0f} ms, max "
            f"{x['max_ms']:.0f} ms (inspection {x['inspection_mean_ms']:.0f} ms; goal p50 ≤ {x['goal_p50_ms']:.0f}, "
            f"p99 ≤ {x['goal_p99_ms']:.0f}: {'met' if x['goal_met'] else 'NOT met'})")


class _Camera:
    """An HTTP MJPEG stream on the loopback interface sending ``frames`` at ``rate`` a second,
    remembering when each was sent (frame k, 1-based, is the stream source's k-th frame)."""

    def __init__(self, frames: list[bytes], rate: float):
        import http.server
        import threading

        self.frames, self.rate, self.sent = frames, rate, {}
        cam = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                t0 = time.monotonic()
                for k, f in enumerate(cam.frames, 1):
                    time.sleep(max(0.0, t0 + k / cam.rate - time.monotonic()))
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(f)
                                     + f + b"\r\n")
                    self.wfile.flush()
                    cam.sent[k] = time.time()
                time.sleep(30)  # hold the connection: the source would reconnect and start again

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, free_port()), Handler)
        self.url = f"http://{LOOPBACK}:{self.server.server_port}/stream.mjpg"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def _stream_latency(tmp: Path, ckpt: Path, broker: Broker, sub: Subscriber, images: list[Path],
                    rate: float = GOAL_RATE, count: int = 150) -> dict[str, Any]:
    """A second station reading a local MJPEG stream of the test parts at ``rate`` frames/s:
    frame sent → message received."""
    import io

    from PIL import Image

    frames = []
    for p in (images * (count // len(images) + 1))[:count]:
        buf = io.BytesIO()
        Image.open(p).convert("RGB").save(buf, "JPEG", quality=95)
        frames.append(buf.getvalue())
    cam = _Camera(frames, rate)
    topic = TOPIC + "/stream"
    stream_sub = Subscriber(broker.port, topic, client_id="bench-stream-consumer")
    station = tmp / "stream.yaml"
    station.write_text(yaml.safe_dump({
        "station": "bench-stream", "model": str(ckpt), "store": str(tmp / "stream-store"),
        "sources": [{"kind": "stream", "url": cam.url, "name": "cam"}],
        "sinks": [{"kind": "mqtt", "host": LOOPBACK, "port": broker.port, "topic": topic}]}))
    port = free_port()
    proc = start_server(None, tmp / "stream-logs", port, station=station)
    try:
        before = httpx.get(f"http://{LOOPBACK}:{port}/metrics").text
        t0 = time.monotonic()
        while time.monotonic() - t0 < count / rate + 60 and len(_inspections(stream_sub)) < count:
            time.sleep(0.1)
        after = httpx.get(f"http://{LOOPBACK}:{port}/metrics").text
    finally:
        proc.terminate()
        proc.wait(60)
        cam.close()
    got = {int(m["image"].rsplit("-", 1)[1].split(".")[0]): stream_sub.arrival[m["key"]]
           for m in _inspections(stream_sub)}
    stream_sub.close()
    names = [str(k) for k in sorted(got) if k in cam.sent]
    out = _latency(names, {str(k): v for k, v in cam.sent.items()}, {str(k): v for k, v in got.items()}, rate,
                   before, after)
    out["frames_sent"] = len(cam.sent)
    # FFmpeg reads ahead while it probes a new stream: the first second's frames wait for that
    steady = [n for n in names if int(n) > rate]
    lat = np.array([got[int(n)] - cam.sent[int(n)] for n in steady]) * 1000
    out["after_first_second"] = {"frames": len(steady), "p50_ms": float(np.quantile(lat, 0.5)),
                                 "p99_ms": float(np.quantile(lat, 0.99)), "max_ms": float(lat.max())}
    return out


def run(json_out: Path, category: Path, *, outage_s: float = 60.0, seed: int = 0, force: bool = False) -> dict[str, Any]:
    samples = load_dataset(category)
    test = sorted((s for s in samples if s.split == "test"), key=lambda s: str(s.path))
    images = [s.path for s in test]
    cfg = DetectorConfig(seed=seed)
    t0 = time.perf_counter()
    det = Detector(cfg, progress=False).fit(samples)
    fit_s = time.perf_counter() - t0
    # The same run's yardsticks: the model and the backbone alone, in-process, batch 32.
    speeds = throughput(det, load_tensors(images[:96], cfg.features.image_size))
    print(f"fitted in {fit_s:.0f} s; in-process model {speeds['model_images_per_s']:.1f} images/s, backbone alone "
          f"{speeds['backbone_images_per_s']:.1f} images/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        ckpt = tmp / "model.ckpt"
        det.save(ckpt)
        test_dir = tmp / "test"
        test_dir.mkdir()
        for i, p in enumerate(images):
            (test_dir / f"{i:05d}{p.suffix}").symlink_to(p.resolve())
        r = run_cli(["predict", str(ckpt), str(test_dir), "--out", str(tmp / "predicted"), "-q"], timeout=1800)
        if r["rc"] != 0:
            raise RuntimeError(f"predict failed: {r['stderr'][-2000:]}")
        predict_s = json.loads((tmp / "predicted" / "run-record.json").read_text())["timings_s"]["predict_s"]
        predict_ips = len(images) / predict_s
        print(f"predict alone: {predict_ips:.1f} images/s ({len(images)} images, {predict_s:.1f} s scoring; "
              f"{r['seconds']:.1f} s with start-up and writing)", flush=True)

        broker = Broker(tmp / "broker").start()
        sub = Subscriber(broker.port, TOPIC, client_id="bench-consumer")
        inbox = tmp / "inbox"
        inbox.mkdir()
        station = tmp / "station.yaml"
        station.write_text(yaml.safe_dump({
            "station": "bench", "model": str(ckpt), "store": str(tmp / "store"),
            "sources": [{"kind": "folder", "path": str(inbox)}],
            "sinks": [{"kind": "mqtt", "host": LOOPBACK, "port": broker.port, "topic": TOPIC}]}))
        port = free_port()
        proc = start_server(None, tmp / "logs", port, station=station)
        feed = Feeder(inbox, images)
        try:
            warm = [feed.drop("warm") for _ in range(8)]
            if _wait(sub, warm, 120) == float("inf"):
                raise RuntimeError("the station delivered nothing in 120 s")
            # 2. burst
            first = time.time()
            burst = [feed.drop("burst") for _ in images]
            _wait(sub, burst, 1800)
            arrived = _arrivals(sub)
            burst_s = max(arrived[n] for n in burst) - first
            station_ips = len(burst) / burst_s
            print(f"burst: {len(burst)} images in {burst_s:.1f} s = {station_ips:.1f} images/s "
                  f"({station_ips / predict_ips:.2f}× predict)", flush=True)
            # 3. paced latency at each rate
            sweep = []
            for rate in RATES:
                before = httpx.get(f"http://{LOOPBACK}:{port}/metrics").text
                paced = feed.paced(f"paced{rate:g}", rate, count=min(int(rate * 15), 300))
                _wait(sub, paced, 600)
                after = httpx.get(f"http://{LOOPBACK}:{port}/metrics").text
                sweep.append(_latency(paced, feed.written, _arrivals(sub), rate, before, after))
                print(_latency_line(sweep[-1]), flush=True)
            rate = GOAL_RATE
            # 5. outage
            broker.stop()
            during = feed.paced("outage", rate, seconds=outage_s)
            backlog = httpx.get(f"http://{LOOPBACK}:{port}/health").json()["station"]["backlog"]
            t_up = time.time()
            broker.start()
            drained = _wait(sub, during, 1800)
            # Reconnecting (the client's back-off) and draining are reported apart.
            times = sorted(_arrivals(sub)[n] for n in during)
            reconnect_s = times[0] - t_up
            drain_rate = (len(times) - 1) / (times[-1] - times[0]) if times[-1] > times[0] else float("nan")
            print(f"outage {outage_s:.0f} s: {len(during)} images arrived meanwhile (backlog {backlog} at restart); "
                  f"first message {reconnect_s:.1f} s after the broker came back, all in {drained:.1f} s; "
                  f"drained at {drain_rate:.0f} messages/s", flush=True)
            health = httpx.get(f"http://{LOOPBACK}:{port}/health").json()
        finally:
            proc.terminate()
            proc.wait(60)
        try:
            stream = _stream_latency(tmp, ckpt, broker, sub, images)
            print(_latency_line(stream, "stream"), flush=True)
        finally:
            sub.close()
            broker.stop()
        fed = list(feed.written)
        got = [m["image"] for m in _inspections(sub)]
        lost = sorted(set(fed) - set(got))
        order_ok = [n for n in got if n.startswith("outage")] == during
        payload = {
            "benchmark": "station", "seed": seed, "category": str(category), "image_size": cfg.features.image_size,
            "test_images": len(images), "fit_s": fit_s, "settle_s": 0.0, "batch": 8, "file_events": True,
            "in_process": {"model_images_per_s": speeds["model_images_per_s"],
                           "backbone_images_per_s": speeds["backbone_images_per_s"]},
            "predict": {"images_per_s": predict_ips, "scoring_s": predict_s, "wall_s": r["seconds"]},
            "burst": {"images": len(burst), "seconds": burst_s, "images_per_s": station_ips,
                      "vs_predict": station_ips / predict_ips},
            "latency": sweep, "paced": next(x for x in sweep if x["rate"] == GOAL_RATE), "stream": stream,
            "outage": {"seconds": outage_s, "images": len(during), "backlog_at_restart": backlog,
                       "reconnect_s": reconnect_s, "drain_s": drained, "drain_messages_per_s": drain_rate,
                       "backoff_max_s": BACKOFF_MAX_S},
            "delivery": {"fed": len(fed), "received_unique": len(set(got)), "lost": len(lost),
                         "repeats_dropped_by_consumer": sub.repeats, "outage_in_order": order_ok,
                         "stored": health["predictions"],
                         "drift_alarms": sum(m.get("kind") == "drift_alarm" for m in sub.messages)},
        }
    write_json(json_out, payload, force)
    print(table(payload))
    return payload


def _latency_row(x: dict[str, Any], what: str) -> str:
    goal = (f"; goal p50 ≤ {x['goal_p50_ms']:.0f}, p99 ≤ {x['goal_p99_ms']:.0f}: "
            f"**{'met' if x['goal_met'] else 'not met'}**") if "goal_met" in x else ""
    return (f"| {what} → message at {x['rate']:g} parts/s: p50 / p99 / max | {x['p50_ms']:.0f} / {x['p99_ms']:.0f} / "
            f"{x['max_ms']:.0f} ms (inspection {x['inspection_mean_ms']:.0f} ms{goal}) |")


def table(p: dict[str, Any]) -> str:
    """The README table."""
    d, b, pa, o = p["delivery"], p["burst"], p["paced"], p["outage"]
    steady = p.get("stream", {}).get("after_first_second")
    rows = [
        "| measure | value |", "|---|---|",
        f"| `predict` alone (scoring, batch) | {p['predict']['images_per_s']:.1f} images/s |",
        (f"| model / backbone alone, in-process, batch 32 | {p['in_process']['model_images_per_s']:.1f} / "
         f"{p['in_process']['backbone_images_per_s']:.1f} images/s |"),
        (f"| station, burst of {b['images']} (file written → MQTT message received) | {b['images_per_s']:.1f} images/s "
         f"= **{b['vs_predict']:.2f}× `predict`** |"),
        *[_latency_row(x, "file closed") for x in p.get("latency", [pa])],
        *([_latency_row(p["stream"], "camera stream (MJPEG over HTTP): frame sent")] if "stream" in p else []),
        *([(f"| … the same, after the stream's first second (FFmpeg probing it) | {steady['p50_ms']:.0f} / "
             f"{steady['p99_ms']:.0f} / {steady['max_ms']:.0f} ms ({steady['frames']} frames) |")] if steady else []),
        f"| broker down {o['seconds']:.0f} s: parts meanwhile, backlog | {o['images']}, {o['backlog_at_restart']} |",
        (f"| broker back → first message / all delivered | {o['reconnect_s']:.1f} s / {o['drain_s']:.1f} s "
         f"(back-off ≤ {o['backoff_max_s']:g} s) |"),
        f"| backlog drain rate once reconnected | {o['drain_messages_per_s']:.0f} messages/s |",
        (f"| fed / received / lost / repeats dropped / in order | {d['fed']} / {d['received_unique']} / "
         f"**{d['lost']}** / {d['repeats_dropped_by_consumer']} / {'yes' if d['outage_in_order'] else 'NO'} |"),
        *([f"| drift alarms sent to the same sink (most test parts are defects) | {d['drift_alarms']} |"]
          if "drift_alarms" in d else []),
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--category", type=Path, default=Path("../shared/data/magnetic_tile/magnetic_tile"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/station.json"))
    ap.add_argument("--outage", type=float, default=60.0)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    run(a.json, a.category, outage_s=a.outage, force=a.force)
