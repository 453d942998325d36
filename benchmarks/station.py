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
3. paced: images written at half that rate; latency from file written to message received
   (p50/p99), and the inspection part of it from the station's own /metrics;
4. outage: the broker stopped for ``--outage`` seconds while images keep arriving at that pace,
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
            # 3. paced latency
            before = httpx.get(f"http://{LOOPBACK}:{port}/metrics").text
            rate = station_ips / 2
            paced = feed.paced("paced", rate, count=min(200, len(images)))
            _wait(sub, paced, 600)
            after = httpx.get(f"http://{LOOPBACK}:{port}/metrics").text
            arrived = _arrivals(sub)
            lat = np.array([arrived[n] - feed.written[n] for n in paced])
            inspect_ms = 1000 * ((_metric(after, "costfilter_inspection_seconds_sum")
                                  - _metric(before, "costfilter_inspection_seconds_sum"))
                                 / max(1.0, _metric(after, "costfilter_inspection_seconds_count")
                                       - _metric(before, "costfilter_inspection_seconds_count")))
            q = np.quantile(lat * 1000, [0.5, 0.99])
            print(f"paced at {rate:.1f} images/s: latency p50 {q[0]:.0f} ms, p99 {q[1]:.0f} ms "
                  f"(inspection {inspect_ms:.0f} ms of it)", flush=True)
            # 4. outage
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
            sub.close()
            broker.stop()
        fed = list(feed.written)
        got = [m["image"] for m in _inspections(sub)]
        lost = sorted(set(fed) - set(got))
        order_ok = [n for n in got if n.startswith("outage")] == during
        payload = {
            "benchmark": "station", "seed": seed, "category": str(category), "image_size": cfg.features.image_size,
            "test_images": len(images), "fit_s": fit_s, "settle_s": 0.5, "batch": 8,
            "in_process": {"model_images_per_s": speeds["model_images_per_s"],
                           "backbone_images_per_s": speeds["backbone_images_per_s"]},
            "predict": {"images_per_s": predict_ips, "scoring_s": predict_s, "wall_s": r["seconds"]},
            "burst": {"images": len(burst), "seconds": burst_s, "images_per_s": station_ips,
                      "vs_predict": station_ips / predict_ips},
            "paced": {"images": len(paced), "rate": rate, "p50_ms": float(q[0]), "p99_ms": float(q[1]),
                      "max_ms": float(lat.max() * 1000), "inspection_mean_ms": inspect_ms},
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


def table(p: dict[str, Any]) -> str:
    """The README table."""
    d, b, pa, o = p["delivery"], p["burst"], p["paced"], p["outage"]
    rows = [
        "| measure | value |", "|---|---|",
        f"| `predict` alone (scoring, batch) | {p['predict']['images_per_s']:.1f} images/s |",
        (f"| model / backbone alone, in-process, batch 32 | {p['in_process']['model_images_per_s']:.1f} / "
         f"{p['in_process']['backbone_images_per_s']:.1f} images/s |"),
        (f"| station, burst of {b['images']} (file written → MQTT message received) | {b['images_per_s']:.1f} images/s "
         f"= **{b['vs_predict']:.2f}× `predict`** |"),
        (f"| latency at {pa['rate']:.1f} images/s: p50 / p99 / max | {pa['p50_ms']:.0f} / **{pa['p99_ms']:.0f}** / "
         f"{pa['max_ms']:.0f} ms (inspection {pa['inspection_mean_ms']:.0f} ms; settle {p['settle_s']} s) |"),
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
