"""A line station against real parts: a Mosquitto broker started here (plain, and TLS with a
password), a local HTTP receiver, a generated video file and a local HTTP MJPEG stream that drops.
Hot folder (once each, moved on, partial and bad files, restart after the commit), stream sampling
and reconnection, MQTT / webhook / JSONL sinks, the outbox through a broker outage and through a
SIGKILL of the service, /health and /metrics, and the station file's one-line errors."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("paho.mqtt")

from conftest import free_port, good_png, planted_defect_png, texture_png

from benchmarks.mqtt import Broker, Subscriber, mosquitto_binary
from costfilter import Detector
from costfilter.serve.store import HistoryStore
from costfilter.station import Station, load_station


def until(cond, timeout: float = 30.0, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every)
    return bool(cond())


def drop(folder: Path, name: str, data: bytes) -> Path:
    """As camera software does: write under a hidden temporary name, then rename into place."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


@pytest.fixture(scope="module")
def model_file(fitted, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "plate.ckpt"
    fitted[0].save(path)
    return path


@pytest.fixture
def broker(tmp_path):
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (the README's test command installs Debian's mosquitto)")
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def station_file(tmp_path: Path, model: Path, sinks: list[dict], sources: list[dict] | None = None, **top) -> Path:
    import yaml

    doc = {"station": "line-3", "model": str(model), "store": str(tmp_path / "store"), "backoff_max_s": 1.0,
           "sources": sources if sources is not None else [{"kind": "folder", "path": "inbox", "settle_s": 0.1,
                                                            "poll_s": 0.05, "incomplete_timeout_s": 0.5}],
           "sinks": sinks, **top}
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def start_station(cfg_path: Path) -> Station:
    """The station as ``watch`` runs it: model and store opened from the file."""
    st = Station(load_station(cfg_path))
    st.start()
    return st


# ------------------------------------------------------------------ hot folder + folder sink
def test_hot_folder_inspects_each_file_once_and_moves_it(fitted, model_file, tmp_path):
    root = fitted[1]
    cfg_path = station_file(tmp_path, model_file, [{"kind": "folder", "path": "out/results.jsonl"}])
    inbox = tmp_path / "inbox"
    st = start_station(cfg_path)
    try:
        drop(inbox, "good.png", good_png(root))
        drop(inbox, "lot7/bad.png", planted_defect_png(3))  # sub-folders are watched too
        drop(inbox, "broken.png", b"\x89PNG\r\n\x1a\n not really")
        drop(inbox, "notes.txt", b"camera log")
        drop(inbox, "upload.png.part", texture_png(5))  # still being written by its writer: left alone
        # A file written slowly: not read while it grows, read whole once it has settled.
        slow = inbox / "slow.png"
        data = texture_png(4)
        with open(slow, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            time.sleep(0.05)
            assert not (tmp_path / "inbox" / "failed" / "slow.png").exists()
            fh.write(data[len(data) // 2:])
        assert until(lambda: len(list((inbox / "done").rglob("*.png"))) == 3
                     and len(list((inbox / "failed").glob("*.reason.txt"))) == 2)
        time.sleep(0.3)  # nothing more happens to what is left
        health = st.health()
    finally:
        st.stop()
    assert sorted(p.relative_to(inbox / "done").as_posix() for p in (inbox / "done").rglob("*.png")) == \
        ["good.png", "lot7/bad.png", "slow.png"]
    assert (inbox / "upload.png.part").exists()  # partial files stay where they are
    reasons = {p.name: p.read_text() for p in (inbox / "failed").glob("*.reason.txt")}
    assert "broken.png" in reasons["broken.png.reason.txt"] and "not an image file" in reasons["notes.txt.reason.txt"]
    messages = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    lines = [m for m in messages if m["kind"] == "inspection"]
    by_image = {m["image"]: m for m in lines}
    assert set(by_image) == {"good.png", "lot7/bad.png", "slow.png"} and len(lines) == 3
    # every part gets an answer: the two files that could not be inspected reach the sink too (L7)
    errors = {m["image"]: m for m in messages if m["kind"] == "error"}
    assert set(errors) == {"broken.png", "notes.txt"} and len(messages) == 5
    assert "incomplete" in errors["broken.png"]["reason"] and "not an image file" in errors["notes.txt"]["reason"]
    assert errors["notes.txt"]["moved_to"].endswith("failed/notes.txt")
    assert by_image["good.png"]["decision"] == "pass" and by_image["lot7/bad.png"]["decision"] == "reject"
    assert by_image["slow.png"]["image_sha256"] == hashlib.sha256(data).hexdigest()  # read whole
    assert all(m["station"] == "line-3" and m["model_sha256"] == st.inspector.sha for m in lines)
    assert st.inspector.sha == Detector.load(model_file, progress=False).state.sha256  # the checkpoint's own hash
    store = HistoryStore(tmp_path / "store")
    assert store.list(limit=0)[0] == 3 and store.backlog() == {}
    src = health["sources"][0]
    assert (src["inspected"], src["failed"], health["sinks"][0]["delivered"]) == (3, 2, 5)


def test_a_missing_hot_folder_is_reported_not_watched(model_file, tmp_path):
    cfg_path = station_file(tmp_path, model_file, [{"kind": "folder", "path": "r.jsonl"}])
    st = start_station(cfg_path)
    try:
        assert until(lambda: "no such folder" in st.sources[0].state, 10)
        assert not st.health()["ok"]
        drop(tmp_path / "inbox", "late.png", texture_png(9))  # the share is mounted after all
        assert until(lambda: st.sources[0].inspected == 1, 30)
        assert st.health()["sources"][0]["state"] == "watching"
    finally:
        st.stop()


def test_restart_between_commit_and_move_does_not_inspect_again(fitted, model_file, tmp_path):
    from costfilter.station.sources import HotFolder

    cfg_path = station_file(tmp_path, model_file, [{"kind": "folder", "path": "results.jsonl"}])
    cfg = load_station(cfg_path)
    path = drop(tmp_path / "inbox", "part.png", texture_png(7))
    # The service was killed after the record (with the input's key) was committed, before the move.
    st = Station(cfg, detector=fitted[0], store=HistoryStore(cfg.store))
    folder = st.sources[0]
    assert isinstance(folder, HotFolder)
    from costfilter.serve.inspection import Item

    key = folder.key(path, path.read_bytes())
    assert st.inspector.inspect([Item("part.png", path.read_bytes(), input_key=key, source=folder.name)])[0].row
    st.start()
    try:
        assert until(lambda: (tmp_path / "inbox" / "done" / "part.png").exists())
        assert until(lambda: st.store.backlog() == {})
    finally:
        st.stop()
    assert st.store.list(limit=0)[0] == 1  # moved on, not inspected twice
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 1
    # The same name written again later is a new part: inspected, and kept beside the first.
    st2 = start_station(cfg_path)
    try:
        drop(tmp_path / "inbox", "part.png", texture_png(8))
        assert until(lambda: (tmp_path / "inbox" / "done" / "part-1.png").exists())
    finally:
        st2.stop()
    assert st2.store.list(limit=0)[0] == 2


# ------------------------------------------------------------------ MQTT through an outage
def test_mqtt_outage_delivers_everything_once_in_order(model_file, tmp_path, broker):
    topic = "plant/line-3/inspections"
    cfg_path = station_file(tmp_path, model_file, [{"kind": "mqtt", "host": "127.0.0.1", "port": broker.port,
                                                    "topic": topic, "timeout_s": 5}])
    sub = Subscriber(broker.port, topic)
    st = start_station(cfg_path)
    inbox = tmp_path / "inbox"
    try:
        drop(inbox, "first.png", texture_png(100))
        assert sub.wait_for(1, 30), st.health()
        broker.stop()
        names = [f"part{i:02d}.png" for i in range(20)]
        for i, name in enumerate(names):
            drop(inbox, name, planted_defect_png(i) if i % 5 == 0 else texture_png(200 + i))
            time.sleep(0.01)  # distinct file times: the folder is taken oldest first
        assert until(lambda: st.store.backlog().get(f"mqtt-{'127.0.0.1'}", 0) == 20, 60), st.health()
        assert until(lambda: not st.health()["sinks"][0]["ok"], 10)
        sink = st.health()["sinks"][0]
        assert sink["state"].startswith("down") and sink["backlog"] == 20
        assert len(sub.messages) == 1
        broker.start()
        assert sub.wait_for(21, 60), (len(sub.messages), st.health())
        assert until(lambda: st.store.backlog() == {}, 10)
    finally:
        st.stop()
        sub.close()
    got = [m["image"] for m in sub.messages]
    assert got == ["first.png"] + names  # all 20, in the order they were inspected
    assert sub.repeats == 0  # and once each: nothing was published while the broker was away
    assert [m["decision"] for m in sub.messages[1:]].count("reject") >= 4
    assert st.health()["sinks"][0]["ok"]


# ------------------------------------------------------------------ SIGKILL with a backlog
def _watch(cfg_path: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "costfilter.cli", "watch", str(cfg_path)],
                                stdout=fh, stderr=fh, env=env)


def test_sigkill_with_pending_results_then_restart_delivers_the_backlog(model_file, tmp_path, broker):
    topic = "plant/line-3/inspections"
    cfg_path = station_file(tmp_path, model_file, [{"kind": "mqtt", "host": "127.0.0.1", "port": broker.port,
                                                    "topic": topic, "timeout_s": 5}])
    sub = Subscriber(broker.port, topic)
    broker.stop()  # the broker is down while the parts arrive
    inbox = tmp_path / "inbox"
    names = [f"p{i}.png" for i in range(6)]
    for i, name in enumerate(names):
        drop(inbox, name, texture_png(300 + i))
        time.sleep(0.01)
    log = tmp_path / "watch.log"
    proc = _watch(cfg_path, log)
    try:
        store_db = tmp_path / "store" / "history.sqlite3"
        assert until(lambda: store_db.exists() and len(list((inbox / "done").glob("*.png"))) == 6, 120), \
            log.read_text()[-2000:]
        store = HistoryStore(tmp_path / "store")
        assert until(lambda: sum(store.backlog().values()) == 6, 30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        broker.start()
        assert sub.wait_for(0, 1) and until(lambda: sub.subscribed.is_set(), 30)
        proc = _watch(cfg_path, log)
        assert sub.wait_for(6, 120), log.read_text()[-2000:]
        assert until(lambda: store.backlog() == {}, 20)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        sub.close()
    assert [m["image"] for m in sub.messages] == names
    assert store.list(limit=0)[0] == 6  # none inspected twice across the kill
    assert "station line-3 stopped" in log.read_text()  # SIGTERM stops it cleanly


# ------------------------------------------------------------------ webhook with retries and HMAC
class _Receiver(http.server.BaseHTTPRequestHandler):
    fail_first = 3
    got: ClassVar[list[tuple[dict, bytes]]] = []
    calls = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls += 1
        if type(self).calls <= self.fail_first:
            self.send_response(503)
            self.end_headers()
            return
        type(self).got.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_retries_in_order_with_signature_and_metrics(fitted, model_file, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from costfilter.serve import create_app

    _Receiver.got, _Receiver.calls = [], 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    cfg_path = station_file(tmp_path, model_file, [{"kind": "webhook", "name": "mes",
                                                    "url": f"http://127.0.0.1:{server.server_port}/hook",
                                                    "secret_env": "HOOK_SECRET", "timeout_s": 5}])
    cfg = load_station(cfg_path)
    st = Station(cfg, detector=fitted[0], store=HistoryStore(cfg.store))
    names = [f"w{i}.png" for i in range(5)]
    try:
        with TestClient(create_app(st.detector, st.store, allowed_hosts=["testserver"], station=st)) as c:
            for i, name in enumerate(names):
                drop(tmp_path / "inbox", name, texture_png(400 + i))
                time.sleep(0.01)
            up = c.post("/predict", files={"file": ("upload.png", texture_png(450), "image/png")})
            assert up.status_code == 200
            assert until(lambda: len(_Receiver.got) == 6, 60), st.health()
            health = c.get("/health").json()
            metrics = c.get("/metrics").text
    finally:
        server.shutdown()
    bodies = [json.loads(b) for _, b in _Receiver.got]
    keys = [b["key"] for b in bodies]
    assert len(set(keys)) == 6 and sorted(b["image"] for b in bodies) == sorted(names + ["upload.png"])
    folder_order = [b["image"] for b in bodies if b["image"] != "upload.png"]
    assert folder_order == names  # retried, still in order
    for headers, body in _Receiver.got:
        assert headers["Idempotency-Key"] == json.loads(body)["key"]
        want = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Costfilter-Signature"], want)
    assert health["status"] == "ok" and health["station"]["name"] == "line-3"
    assert [s["name"] for s in health["station"]["sinks"]] == ["mes"] and health["station"]["backlog"] == 0
    assert health["station"]["sources"][0]["kind"] == "folder"
    assert 'costfilter_sink_failures_total{sink="mes"} 3.0' in metrics
    assert 'costfilter_messages_delivered_total{sink="mes"} 6.0' in metrics
    assert 'costfilter_images_total{source="upload"} 1.0' in metrics
    assert 'costfilter_outbox_backlog{sink="mes"} 0.0' in metrics
    assert "costfilter_inspection_seconds_bucket" in metrics


# ------------------------------------------------------------------ streams
def _video(path: Path, n: int) -> Path:
    cv2 = pytest.importorskip("cv2")
    from costfilter.toy_images import texture

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (48, 48))
    assert w.isOpened()
    rng = np.random.default_rng(0)
    for _ in range(n):
        frame = texture(rng)
        w.write(np.repeat(frame[..., None], 3, axis=2) if frame.ndim == 2 else frame)
    w.release()
    return path


@pytest.mark.parametrize("sampling, expected", [({"every": 3}, 4), ({"max_fps": 0.2}, 1)])
def test_stream_from_a_video_file_every_nth_frame_or_at_most_f_a_second(model_file, tmp_path, sampling, expected):
    """12 frames read in well under 5 s: every 3rd gives 4; at most 0.2 a second gives the first."""
    video = _video(tmp_path / "line.avi", 12)
    cfg_path = station_file(tmp_path, model_file, [{"kind": "folder", "path": "results.jsonl"}],
                            sources=[{"kind": "stream", "url": str(video), "name": "cam1", **sampling}])
    st = start_station(cfg_path)
    try:
        assert until(lambda: st.sources[0].state.startswith("finished"), 60), st.health()
        assert until(lambda: st.store.backlog() == {}, 20)
    finally:
        st.stop()
    lines = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(lines) == expected and all(m["source"] == "cam1" and m["image"].startswith("cam1/") for m in lines)
    assert st.sources[0].state == "finished (12 frames read)"


def test_stream_that_cannot_be_opened_backs_off_and_reconnects(model_file, tmp_path):
    pytest.importorskip("cv2")
    video = tmp_path / "later.avi"  # not there yet: the camera is not up
    cfg_path = station_file(tmp_path, model_file, [{"kind": "folder", "path": "results.jsonl"}],
                            sources=[{"kind": "stream", "url": str(video), "reconnect": True, "every": 4,
                                      "backoff_max_s": 1.0, "name": "cam2"}])
    st = start_station(cfg_path)
    try:
        assert until(lambda: st.sources[0].state.startswith("reconnecting"), 20)
        assert not st.health()["ok"]
        _video(tmp_path / "tmp.avi", 8).rename(video)
        assert until(lambda: st.sources[0].inspected >= 2, 60), st.health()
    finally:
        st.stop()


# ------------------------------------------------------------------ the file's errors
@pytest.mark.parametrize("change, message", [
    ({"sinks": [{"kind": "mqtt", "hots": "x"}]}, "sinks[0] (mqtt): unknown key 'hots'"),
    ({"sinks": [{"kind": "kafka"}]}, "sinks[0]: unknown kind 'kafka'"),
    ({"sinks": [{"kind": "webhook", "url": "http://h/x", "secret_env": "NO_SUCH_VAR_X"}]},
     "the environment variable NO_SUCH_VAR_X is not set"),
    ({"sources": []}, "no sources"),
    ({"sources": [{"kind": "stream", "url": "rtsp://cam", "every": 0}]}, "every ≥ 1"),
    ({"operating_point": {"false_reject": 0.01, "threshold": 1.0}}, "not both or neither"),
    ({"station": "line 3"}, "station: 'line 3' must be"),
])
def test_station_file_errors_are_one_line(model_file, tmp_path, change, message):
    from click.testing import CliRunner

    from costfilter.cli import main

    cfg_path = station_file(tmp_path, model_file, [{"kind": "folder", "path": "r.jsonl"}])
    import yaml

    doc = yaml.safe_load(cfg_path.read_text()) | change
    cfg_path.write_text(yaml.safe_dump(doc))
    r = CliRunner().invoke(main, ["watch", str(cfg_path), "--check"])
    assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert "Traceback" not in r.output


def test_watch_check_prints_the_plan_and_operating_point(model_file, tmp_path):
    from click.testing import CliRunner

    from costfilter.cli import main

    cfg_path = station_file(tmp_path, model_file, [{"kind": "folder", "path": "r.jsonl"}],
                            operating_point={"threshold": 123.0})
    r = CliRunner().invoke(main, ["watch", str(cfg_path), "--check"])
    assert r.exit_code == 0, r.output
    assert "source folder-inbox (folder)" in r.output and "sink folder-r.jsonl (folder)" in r.output
    cfg = load_station(cfg_path)
    from costfilter.station import open_detector

    assert open_detector(cfg).thresholds.image == 123.0


def test_mqtt_over_tls_with_user_and_password(model_file, tmp_path, monkeypatch):
    """A broker that wants TLS and a password: the wrong password leaves the sink down with the
    broker's reason and the message kept; the right one delivers it, encrypted."""
    import shutil as sh

    if mosquitto_binary() is None or sh.which("openssl") is None or sh.which("mosquitto_passwd") is None:
        pytest.skip("needs mosquitto, mosquitto_passwd and openssl (Debian: mosquitto, openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    broker = Broker(tmp_path / "broker", users={"line3": "right"}, tls=(cert, key)).start()
    try:
        monkeypatch.setenv("MQTT_PASSWORD", "wrong")
        sink = {"kind": "mqtt", "host": "127.0.0.1", "port": broker.port, "topic": "t/line-3", "tls": True,
                "ca_file": str(cert), "username": "line3", "password_env": "MQTT_PASSWORD", "timeout_s": 5}
        cfg_path = station_file(tmp_path, model_file, [sink])
        st = start_station(cfg_path)
        try:
            drop(tmp_path / "inbox", "a.png", texture_png(500))
            assert until(lambda: "down" in st.health()["sinks"][0]["state"], 30)
            assert st.store.backlog() == {"mqtt-127.0.0.1": 1}
        finally:
            st.stop()
        import paho.mqtt.client as mqtt

        got = []
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-consumer")
        sub.tls_set(ca_certs=str(cert))
        sub.username_pw_set("line3", "right")
        sub.on_connect = lambda c, u, f, rc, p=None: c.subscribe("t/line-3", qos=1)
        sub.on_message = lambda c, u, m: got.append(json.loads(m.payload))
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()
        monkeypatch.setenv("MQTT_PASSWORD", "right")
        time.sleep(0.5)
        st = start_station(cfg_path)
        try:
            assert until(lambda: len(got) == 1, 30), st.health()
        finally:
            st.stop()
            sub.disconnect()
            sub.loop_stop()
        assert got[0]["image"] == "a.png"
    finally:
        broker.stop()


class _Mjpeg(http.server.BaseHTTPRequestHandler):
    """A camera's HTTP MJPEG stream that drops the connection after a few frames."""

    frames: ClassVar[list[bytes]] = []
    connections = 0

    def do_GET(self):
        type(self).connections += 1
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        for f in self.frames:
            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(f) + f + b"\r\n")
            self.wfile.flush()
            time.sleep(0.02)

    def log_message(self, *args):
        pass


def test_http_stream_that_drops_is_reopened(model_file, tmp_path):
    """A network stream (HTTP MJPEG, read by OpenCV's FFmpeg) that drops after 5 frames: the source
    says it is reconnecting, reopens it after its back-off and goes on inspecting."""
    pytest.importorskip("cv2")
    import io

    from PIL import Image

    from costfilter.toy_images import texture

    rng = np.random.default_rng(1)
    _Mjpeg.frames, _Mjpeg.connections = [], 0
    for _ in range(5):
        buf = io.BytesIO()
        Image.fromarray(texture(rng)).convert("RGB").save(buf, "JPEG", quality=95)
        _Mjpeg.frames.append(buf.getvalue())
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Mjpeg)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/stream.mjpg"
    cfg_path = station_file(tmp_path, model_file, [{"kind": "folder", "path": "results.jsonl"}],
                            sources=[{"kind": "stream", "url": url, "backoff_max_s": 1.0, "name": "cam3"}])
    st = start_station(cfg_path)
    states = []
    try:
        assert until(lambda: states.append(st.sources[0].state) or st.sources[0].inspected >= 8, 60), st.health()
    finally:
        st.stop()
        server.shutdown()
    assert _Mjpeg.connections >= 2
    assert any(s.startswith("reconnecting") for s in states)
    assert st.health()["sources"][0]["failed"] == 0


def test_readme_station_example_is_a_valid_station_file(tmp_path, monkeypatch):
    """The tutorial's complete station.yaml reads as written (its secrets set as the page says)."""
    readme = (Path(__file__).resolve().parent.parent / "docs" / "tutorials" / "line.md").read_text()
    opening = 'yaml title="station-full.yaml"\n'
    start = readme.index(opening) + len(opening)
    block = readme[start: readme.index("```", start)]
    monkeypatch.setenv("MQTT_PASSWORD", "x")
    monkeypatch.setenv("MES_HOOK_SECRET", "y")
    path = tmp_path / "station.yaml"
    path.write_text(block)
    cfg = load_station(path)
    assert [s.name for s in cfg.sources] == ["folder-inbox", "cam-2"]
    assert [k.name for k in cfg.sinks] == ["mqtt-broker.plant.example", "mes", "folder-line-3.jsonl"]
    assert cfg.operating_point.false_reject == 0.01 and cfg.sinks[0].tls and cfg.sources[1].every == 5


def test_with_an_api_key_health_hides_targets_and_reasons(fitted, model_file, tmp_path):
    """/health answers without the key (load balancers), so it names no host, path or URL then;
    /station, behind the key, has them all."""
    from fastapi.testclient import TestClient

    from costfilter.serve import create_app

    dead = free_port()
    cfg_path = station_file(tmp_path, model_file, [{"kind": "webhook", "name": "mes", "timeout_s": 1,
                                                    "url": f"http://127.0.0.1:{dead}/hook?token=abc"}])
    cfg = load_station(cfg_path)
    st = Station(cfg, detector=fitted[0], store=HistoryStore(cfg.store))
    with TestClient(create_app(st.detector, st.store, allowed_hosts=["testserver"], station=st, api_key="k")) as c:
        drop(tmp_path / "inbox", "a.png", texture_png(600))
        assert until(lambda: st.health()["sinks"][0]["state"].startswith("down"), 30)
        public = c.get("/health")
        assert public.status_code == 200 and public.json()["status"] == "degraded"
        text = public.text
        assert "token" not in text and "127.0.0.1" not in text and str(tmp_path) not in text
        sink = public.json()["station"]["sinks"][0]
        assert sink["state"] == "down" and sink["backlog"] == 1 and "target" not in sink
        assert c.get("/station").status_code == 401
        full = c.get("/station", headers={"Authorization": "Bearer k"}).json()
        assert "token=abc" in full["sinks"][0]["target"] and "127.0.0.1" in full["sinks"][0]["state"]


def test_a_stream_without_opencv_is_a_one_line_error_at_check(model_file, tmp_path, monkeypatch):
    import sys

    from click.testing import CliRunner

    from costfilter.cli import main

    monkeypatch.setitem(sys.modules, "cv2", None)  # as if opencv-python-headless were not installed
    cfg_path = station_file(tmp_path, model_file, [{"kind": "folder", "path": "r.jsonl"}],
                            sources=[{"kind": "stream", "url": "rtsp://cam/1"}])
    r = CliRunner().invoke(main, ["watch", str(cfg_path), "--check"])
    assert r.exit_code == 2 and "stream sources need OpenCV" in r.output and "Traceback" not in r.output, r.output


def test_drift_alarm_reaches_the_sinks_and_the_audit_trail(model_file, tmp_path):
    """A line that sends good parts, then defective ones only: the window leaves its baseline, and
    the alarm is delivered to the station's sink beside the inspections and written to the audit
    trail. (A tiny baseline and window and a generous false-alarm budget, so a few images show it.)"""
    from costfilter.serve.audit import recent

    cfg_path = station_file(tmp_path, model_file, [{"kind": "folder", "path": "out/results.jsonl"}],
                            drift={"window": 4, "baseline": 4, "alpha": 0.5})
    inbox = tmp_path / "inbox"
    st = start_station(cfg_path)
    try:
        for i in range(4):
            drop(inbox, f"good{i}.png", texture_png(20 + i))
        assert until(lambda: len(list((inbox / "done").glob("good*.png"))) == 4)
        for i in range(6):
            drop(inbox, f"bad{i}.png", planted_defect_png(10 + i))
        out = tmp_path / "out" / "results.jsonl"
        def window_alarms() -> list[dict]:
            rows = [json.loads(x) for x in out.read_text().splitlines()] if out.is_file() else []
            return [m for m in rows if m["kind"] == "drift_alarm" and not m["statistic"].startswith("baseline")]

        assert until(lambda: bool(window_alarms()), timeout=30)
        state = st.loop.drift()["line-3"]
    finally:
        st.stop()
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    alarm = window_alarms()[0]
    assert alarm["station"] == "line-3" and alarm["value"] >= alarm["limit"] and alarm["message"].startswith("drift: ")
    assert state["alarms"] >= 1 and state["active"][alarm["statistic"]] and state["baseline"] == 4
    assert lines.index(alarm) > 4  # raised by the defective parts, not by the baseline
    logged = recent(HistoryStore(tmp_path / "store").engine, action="drift_alarm")
    assert {e["user"] for e in logged} == {"station line-3"}
    assert alarm["statistic"] in {e["details"]["statistic"] for e in logged}


def test_an_mqtt_ca_file_that_is_not_there_is_named_in_one_line(model_file, tmp_path):
    """Found by running the docs' complete station file: OpenSSL's error named no file."""
    from click.testing import CliRunner

    from costfilter.cli import main

    sink = {"kind": "mqtt", "host": "127.0.0.1", "port": 1, "tls": True, "ca_file": "certs/plant-ca.pem"}
    path = station_file(tmp_path, model_file, [sink])
    (tmp_path / "inbox").mkdir()
    res = CliRunner().invoke(main, ["watch", str(path), "--check"])
    assert res.exit_code == 2
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(tmp_path / "certs" / "plant-ca.pem") in last and "ca_file" in last
