"""Regression tests for the December line probe (``shared/design/probe-line-2026-12.md``), one per
case L1–L22, each named by its id. Each reproduces the probe's case on tiny data and fails on the
code the probe ran (bc3f9c3). The audit's full tamper table is ``test_audit.py``; AUPIMO's brute
force is ``test_metrics.py``."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("fastapi")
pytest.importorskip("paho.mqtt")

from click.testing import CliRunner
from conftest import free_port, good_png, make_mvtec, planted_defect_png, texture_png
from test_station import drop, model_file, start_station, station_file, until  # noqa: F401 - model_file: a fixture

from benchmarks.mqtt import Broker, mosquitto_binary
from costfilter.cli import main
from costfilter.errors import CostfilterError
from costfilter.serve import HistoryStore
from costfilter.serve.audit import verify
from costfilter.station import Station, load_station


def _check(cfg_path: Path):
    return CliRunner().invoke(main, ["watch", str(cfg_path), "--check"])


def _edit(cfg_path: Path, **changes) -> Path:
    doc = yaml.safe_load(cfg_path.read_text()) | changes
    cfg_path.write_text(yaml.safe_dump(doc))
    return cfg_path


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _served_store(fitted, tmp_path, n: int = 3) -> HistoryStore:
    """A store with ``n`` inspections through the real inspector, and a verdict on the first."""
    from costfilter.serve.inspection import Inspector, Item
    from costfilter.serve.loop import OperatorLoop

    store = HistoryStore(tmp_path / "store")
    inspector = Inspector(fitted[0], store, model_name="m.ckpt")
    rows = [inspector.inspect([Item(f"p{i}.png", planted_defect_png(i))])[0].row for i in range(n)]
    loop = OperatorLoop(inspector)
    loop.give_verdict(rows[0]["id"], "defect", "alice")
    loop.give_verdict(rows[0]["id"], "good", "bob")
    assert verify(store.engine)[2] == []
    return store


# ------------------------------------------------------------------ the audit (L1, L4, L5)
def test_L01_audit_export_never_writes_over_the_history(fitted, tmp_path):
    store = _served_store(fitted, tmp_path)
    db = store.root / "history.sqlite3"
    r = CliRunner().invoke(main, ["audit", "export", str(store.root), "-o", str(db), "--force"])
    assert r.exit_code == 2 and "inside the store" in r.output and "Traceback" not in r.output
    ok = CliRunner().invoke(main, ["audit", "verify", str(store.root)])
    assert ok.exit_code == 0 and "chain intact" in ok.output


def test_L04_a_deleted_verdict_is_named(fitted, tmp_path):
    store = _served_store(fitted, tmp_path)
    db = sqlite3.connect(store.root / "history.sqlite3")
    db.execute("DELETE FROM verdicts WHERE seq = 2")
    db.commit()
    r = CliRunner().invoke(main, ["audit", "verify", str(store.root)])
    assert r.exit_code == 1 and "verdict 2 of audit entry" in r.output and "deleted" in r.output


def test_L05_backdated_row_active_pointer_and_edited_filename_are_named(fitted, tmp_path):
    store = _served_store(fitted, tmp_path)
    db = sqlite3.connect(store.root / "history.sqlite3")
    db.execute("INSERT INTO predictions SELECT 'forged', '2001-01-01 00:00:00.000000', 'forged.png', image_sha256, "
               "width, height, score, 'pass', typical_score, image_threshold, pixel_threshold, map_scale, "
               "model_sha256, model_version, regions, files, station, source FROM predictions LIMIT 1")
    db.execute("UPDATE predictions SET filename = 'renamed.png' WHERE filename = 'p1.png'")
    db.commit()
    r = CliRunner().invoke(main, ["audit", "verify", str(store.root)])
    assert r.exit_code == 1
    assert "prediction forged (forged.png) has no entry in the audit trail" in r.output
    assert "(renamed.png) differs from what audit entry" in r.output


def test_L05_an_active_version_switched_by_sql_is_named_and_not_followed(fitted, tmp_path):
    from costfilter.serve.audit import active_version
    from costfilter.serve.versions import ModelVersions

    store = HistoryStore(tmp_path / "store")
    v = ModelVersions(store)
    model = tmp_path / "m.ckpt"
    fitted[0].save(model)
    from costfilter import Detector

    v.start(model, Detector.load(model, progress=False).state.sha256)
    v.add("f" * 64, v.keep_file(model, "f" * 64), parent=1, user="admin", note="", summary={}, activate=False)
    assert active_version(store.engine) == 1
    db = sqlite3.connect(store.root / "history.sqlite3")
    db.execute("UPDATE versions SET active = (n = 2)")
    db.commit()
    assert active_version(store.engine) is None  # the service's follower serves it only with its entry
    r = CliRunner().invoke(main, ["audit", "verify", str(store.root)])
    assert r.exit_code == 1 and "the active model version is v2 in the database but v1" in r.output


# ------------------------------------------------------------------ the station's file (L2, L3, L12)
@pytest.mark.parametrize("source, message", [
    ({"kind": "folder", "path": "in", "done": "in"}, "must not be the watched folder"),
    ({"kind": "folder", "path": "in", "done": "out", "failed": "out"}, "must be separate folders"),
    ({"kind": "folder", "path": "in/sub", "done": "in"}, "inside its own done or failed folder"),
])
def test_L02_check_refuses_folders_that_loop(model_file, tmp_path, source, message):  # noqa: F811
    r = _check(station_file(tmp_path, model_file, [{"kind": "folder", "path": "r.jsonl"}], sources=[source]))
    assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output


@pytest.mark.parametrize("sources, message", [
    ([{"kind": "folder", "path": "in", "name": "a"}, {"kind": "folder", "path": "in", "name": "b"}],
     "watch the same files"),
    ([{"kind": "folder", "path": "in", "name": "a"}, {"kind": "folder", "path": "in/lot", "name": "b"}],
     "watch the same files"),
    ([{"kind": "folder", "path": "in", "name": "a", "done": "other/done"}, {"kind": "folder", "path": "other",
                                                                            "name": "b"}], "overlap"),
])
def test_L02_check_refuses_sources_that_collide(model_file, tmp_path, sources, message):  # noqa: F811
    r = _check(station_file(tmp_path, model_file, [{"kind": "folder", "path": "r.jsonl"}], sources=sources))
    assert r.exit_code == 2 and message in r.output, r.output


@pytest.mark.parametrize("sink, message", [
    ({"kind": "webhook", "url": "http://127.0.0.1:9/h", "timeout_s": -5}, "timeout_s must be a positive"),
    ({"kind": "webhook", "url": "http://127.0.0.1:9/h", "timeout_s": 0}, "timeout_s must be a positive"),
    ({"kind": "mqtt", "host": "127.0.0.1", "topic": "plant/#"}, "wildcards"),
    ({"kind": "mqtt", "host": "127.0.0.1", "topic": "plant/+/x"}, "wildcards"),
    ({"kind": "mqtt", "host": "127.0.0.1", "timeout_s": -1}, "timeout_s must be a positive"),
])
def test_L03_check_refuses_the_values_that_killed_a_sink_thread(model_file, tmp_path, sink, message):  # noqa: F811
    r = _check(station_file(tmp_path, model_file, [sink]))
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output


def test_L03_a_sink_that_raises_anything_stays_alive_and_health_says_so(fitted, model_file, tmp_path):  # noqa: F811
    cfg = load_station(station_file(tmp_path, model_file, [{"kind": "folder", "path": "out/a.jsonl", "name": "a"},
                                                           {"kind": "folder", "path": "out/b.jsonl", "name": "b"}],
                                    watchdog_s=0.5))
    st = Station(cfg, detector=fitted[0], store=HistoryStore(cfg.store))
    calls = []

    def broken(payload):
        calls.append(payload["key"])
        raise ValueError("a bug in the sink")

    st.deliverers[0].sink.send = broken
    st.watchdog.tick_s = 0.1
    st.start()
    try:
        drop(tmp_path / "inbox", "x.png", texture_png(1))
        assert until(lambda: len(calls) >= 2, 30)  # retried: its thread did not end
        health = st.health()
        sink = health["sinks"][0]
        assert st.deliverers[0].thread.is_alive() and not sink["ok"] and not health["ok"]
        assert "ValueError: a bug in the sink" in sink["state"]
        # a sending thread that ends after all (killed from outside): the watchdog turns it red and tells the others
        st.deliverers[0].stopping.set()
        st.deliverers[0].wake.set()
        st.deliverers[0].thread.join(10)
        st.deliverers[0].stopping.clear()
        assert until(lambda: "sink a" in st.watchdog.problems, 10)
        assert "its sending thread ended" in st.health()["sinks"][0]["state"] and not st.health()["ok"]
        assert until(lambda: any(m["kind"] == "alarm" and m["subject"] == "sink a"
                                 for m in _jsonl(tmp_path / "out" / "b.jsonl")), 10)
    finally:
        st.stop()


def test_L03_a_stalled_model_thread_is_named_by_the_watchdog(fitted, model_file, tmp_path):  # noqa: F811
    from costfilter import model_thread
    from costfilter.station.watchdog import Watchdog

    cfg = load_station(station_file(tmp_path, model_file, [{"kind": "folder", "path": "out/a.jsonl"}]))
    st = Station(cfg, detector=fitted[0], store=HistoryStore(cfg.store))
    now = [0.0]
    dog = Watchdog(st.inspector, [], [], watchdog_s=5, anchor_s=0, backoff_max_s=1, clock=lambda: now[0])
    release = __import__("threading").Event()
    model_thread.submit(release.wait, 30)  # a job that holds the model thread
    try:
        assert dog.check() == {}  # the probe is queued behind it
        now[0] = 6.0
        assert "stalled" in dog.check()["model"]
    finally:
        release.set()
    assert until(lambda: dog._probe.done(), 10)
    now[0] = 7.0
    assert dog.check() == {}
    alarms = [m for m in st.store.pending(cfg.sinks[0].name) if m["payload"]["kind"] == "alarm"]
    assert [m["payload"]["state"] for m in alarms] == ["raised", "cleared"]


def test_L12_a_relative_video_file_is_found_from_the_station_files_folder(model_file, tmp_path, monkeypatch):  # noqa: F811
    (tmp_path / "st6").mkdir()
    (tmp_path / "st6" / "v.avi").write_bytes(b"")
    cfg_path = station_file(tmp_path / "st6", model_file, [{"kind": "folder", "path": "r.jsonl"}],
                            sources=[{"kind": "stream", "url": "v.avi"}, {"kind": "stream", "url": "0", "name": "usb"},
                                     {"kind": "stream", "url": "rtsp://cam/1", "name": "cam"}])
    monkeypatch.chdir(tmp_path)
    cfg = load_station(Path("st6") / cfg_path.name)
    assert [s.url for s in cfg.sources] == [str((tmp_path / "st6" / "v.avi").resolve()), "0", "rtsp://cam/1"]


# ------------------------------------------------------------------ the hot folder (L6, L7, L8, L15, L16)
def _hot(tmp_path, model_file, **source):  # noqa: F811
    src = {"kind": "folder", "path": "inbox", "poll_s": 0.05} | source
    return station_file(tmp_path, model_file, [{"kind": "folder", "path": "out/r.jsonl"}], sources=[src])


def test_L06_a_copy_dropped_again_is_inspected_again(model_file, tmp_path):  # noqa: F811
    original = tmp_path / "img.png"
    original.write_bytes(texture_png(3))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    st = start_station(_hot(tmp_path, model_file))
    try:
        for n in (1, 2):
            shutil.copy2(original, tmp_path / ".stage.png")  # cp -p: same name, content and time
            os.replace(tmp_path / ".stage.png", inbox / "p.png")
            assert until(lambda n=n: len(list((inbox / "done").glob("p*.png"))) == n, 30)
            assert until(lambda n=n: len(_jsonl(tmp_path / "out" / "r.jsonl")) == n, 30)
    finally:
        st.stop()
    assert HistoryStore(tmp_path / "store").list(limit=0)[0] == 2


def test_L07_a_slow_writer_is_waited_for_and_a_failed_file_reaches_the_sinks(model_file, tmp_path):  # noqa: F811
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    st = start_station(_hot(tmp_path, model_file, incomplete_timeout_s=5))
    data = texture_png(7)
    try:
        with open(inbox / "slow1.png", "wb") as fh:  # four chunks with pauses, closed between them
            pass
        for k in range(4):
            with open(inbox / "slow1.png", "ab") as fh:
                fh.write(data[k * len(data) // 4:(k + 1) * len(data) // 4])
            time.sleep(0.4)
        (inbox / "junk.png").write_bytes(b"not an image at all")
        assert until(lambda: (inbox / "done" / "slow1.png").exists() and (inbox / "failed" / "junk.png").exists(), 30)
        assert until(lambda: len(_jsonl(tmp_path / "out" / "r.jsonl")) == 2, 30)
    finally:
        st.stop()
    messages = {m["image"]: m for m in _jsonl(tmp_path / "out" / "r.jsonl")}
    assert messages["slow1.png"]["kind"] == "inspection"
    assert messages["slow1.png"]["image_sha256"] == __import__("hashlib").sha256(data).hexdigest()
    assert messages["junk.png"]["kind"] == "error" and "junk.png" in messages["junk.png"]["reason"]


def test_L07_a_truncated_image_fails_after_the_timeout_not_at_the_first_read(model_file, tmp_path):  # noqa: F811
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    data = texture_png(8)
    (inbox / "cut.png").write_bytes(data[: len(data) // 2])
    st = start_station(_hot(tmp_path, model_file, incomplete_timeout_s=1.5))
    try:
        time.sleep(0.5)
        assert (inbox / "cut.png").exists()  # waited for
        assert until(lambda: (inbox / "failed" / "cut.png.reason.txt").exists(), 30)
    finally:
        st.stop()
    assert "incomplete" in (inbox / "failed" / "cut.png.reason.txt").read_text()


def test_L08_temporary_suffixes_in_any_case_are_left_alone(model_file, tmp_path):  # noqa: F811
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    st = start_station(_hot(tmp_path, model_file))
    try:
        for name in ("d.PNG.PART", "e.png.Tmp", "f.png.CRDOWNLOAD"):
            (inbox / name).write_bytes(texture_png(2)[:100])
        drop(inbox, "ok.png", texture_png(2))
        assert until(lambda: (inbox / "done" / "ok.png").exists(), 30)
        time.sleep(0.3)
    finally:
        st.stop()
    assert all((inbox / n).exists() for n in ("d.PNG.PART", "e.png.Tmp", "f.png.CRDOWNLOAD"))
    assert not (inbox / "failed").exists() or not any((inbox / "failed").iterdir())


def test_L15_linked_folders_are_watched_and_broken_links_reported(model_file, tmp_path):  # noqa: F811
    inbox, elsewhere = tmp_path / "inbox", tmp_path / "elsewhere"
    inbox.mkdir()
    elsewhere.mkdir()
    (inbox / "outdir").symlink_to(elsewhere)
    (inbox / "loop").symlink_to(inbox)  # a link loop: walked once
    (inbox / "broken.png").symlink_to(tmp_path / "gone.png")
    st = start_station(_hot(tmp_path, model_file))
    try:
        drop(elsewhere, "cam.png", texture_png(4))
        assert until(lambda: (inbox / "done" / "outdir" / "cam.png").exists(), 30)
        assert until(lambda: (inbox / "failed" / "broken.png.reason.txt").exists(), 30)
        assert until(lambda: len(_jsonl(tmp_path / "out" / "r.jsonl")) == 2, 30)
    finally:
        st.stop()
    assert "a symbolic link to nothing" in (inbox / "failed" / "broken.png.reason.txt").read_text()
    assert {m["kind"] for m in _jsonl(tmp_path / "out" / "r.jsonl")} == {"inspection", "error"}


def test_L16_a_closed_file_is_picked_up_by_its_event_not_the_next_listing(model_file, tmp_path):  # noqa: F811
    """Listing only every 60 s: the image is inspected all the same, on its close-write event."""
    pytest.importorskip("watchdog")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    st = start_station(_hot(tmp_path, model_file, poll_s=60))
    try:
        assert until(lambda: st.sources[0].state == "watching", 30)
        time.sleep(0.3)  # past its first listing: the next is a minute away
        (inbox / "now.png").write_bytes(texture_png(5))  # written in place: close-write
        drop(inbox, "moved.png", texture_png(6))  # renamed in: moved-to
        assert until(lambda: len(_jsonl(tmp_path / "out" / "r.jsonl")) == 2, 30)
        assert st.sources[0].events.active
    finally:
        st.stop()


# ------------------------------------------------------------------ sinks and the service (L9, L10, L11, L13)
def test_L09_a_wrong_mqtt_password_is_named(model_file, tmp_path, monkeypatch):  # noqa: F811
    if mosquitto_binary() is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("needs mosquitto and mosquitto_passwd (Debian: mosquitto)")
    broker = Broker(tmp_path / "broker", users={"line3": "right"}).start()
    try:
        monkeypatch.setenv("MQTT_PW", "wrong")
        sink = {"kind": "mqtt", "host": "127.0.0.1", "port": broker.port, "username": "line3",
                "password_env": "MQTT_PW", "timeout_s": 2}
        st = start_station(station_file(tmp_path, model_file, [sink]))
        try:
            drop(tmp_path / "inbox", "a.png", texture_png(9))
            assert until(lambda: "refused" in st.health()["sinks"][0]["state"], 30), st.health()
            time.sleep(2.5)  # past a reconnect, whose disconnect says only "Unspecified error"
            state = st.health()["sinks"][0]["state"]
        finally:
            st.stop()
    finally:
        broker.stop()
    assert "not authori" in state.lower() and "'line3'" in state and "$MQTT_PW" in state, state


def test_L10_health_without_a_key_names_no_host_source_model_or_threshold(fitted, model_file, tmp_path):  # noqa: F811
    from fastapi.testclient import TestClient

    from costfilter.serve import create_app

    cfg = load_station(station_file(tmp_path, model_file, [{"kind": "mqtt", "host": "127.0.0.1",
                                                            "port": free_port(), "timeout_s": 1}]))
    st = Station(cfg)  # the model opened from its file, as `serve --station` does
    app = create_app(st.detector, st.store, allowed_hosts=["testserver"], station=st, api_key="k",
                     model_name="plate.ckpt")
    assert len(st.inspector.sha) == 64
    with TestClient(app) as c:
        public = c.get("/health")
        full = c.get("/station", headers={"Authorization": "Bearer k"}).json()
    text = public.text
    assert public.status_code == 200
    for secret in ("127.0.0.1", "mqtt-127", "folder-inbox", "plate.ckpt", st.inspector.sha, str(tmp_path)):
        assert secret not in text, secret
    assert "thresholds" not in public.json()["model"] and "sha256" not in public.json()["model"]
    assert full["sinks"][0]["name"] == "mqtt-127.0.0.1"  # behind the key, all of it


def test_L11_an_acknowledged_message_is_not_sent_again_while_its_delivery_cannot_be_recorded(
        fitted, model_file, tmp_path):  # noqa: F811
    cfg = load_station(station_file(tmp_path, model_file, [{"kind": "folder", "path": "out/r.jsonl"}]))
    st = Station(cfg, detector=fitted[0], store=HistoryStore(cfg.store))
    real, failures = st.store.mark_delivered, [0]

    def full_disk(seq):
        if failures[0] < 3:
            failures[0] += 1
            raise OSError(28, "database or disk is full")
        real(seq)

    st.store.mark_delivered = full_disk
    st.start()
    try:
        drop(tmp_path / "inbox", "a.png", texture_png(10))
        assert until(lambda: failures[0] == 3 and st.store.backlog() == {}, 30)
    finally:
        st.stop()
    assert len(_jsonl(tmp_path / "out" / "r.jsonl")) == 1 and st.deliverers[0].delivered == 1


def test_L13_one_key_for_two_roles_is_refused(fitted, tmp_path):
    from costfilter.serve import create_app
    from costfilter.serve.security import key_entry, load_key_file

    store = HistoryStore(tmp_path / "s")
    with pytest.raises(CostfilterError, match="the operator key .* is the same key as 'admin'"):
        create_app(fitted[0], store, api_key="K", operator_key="K")
    sha = key_entry("K", "a", "admin")[0]
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump([{"name": "a", "role": "admin", "sha256": sha},
                                    {"name": "b", "role": "operator", "sha256": sha}]))
    with pytest.raises(CostfilterError, match="entry 2 \\(b\\): the same key as 'a'"):
        load_key_file(str(keys))
    model = tmp_path / "m.ckpt"
    fitted[0].save(model)
    r = CliRunner().invoke(main, ["serve", str(model), "--store", str(tmp_path / "s2"), "--api-key", "K",
                                  "--operator-key", "K"])
    assert r.exit_code == 2 and "give each role its own key" in r.output and "Traceback" not in r.output


# ------------------------------------------------------------------ export, metrics, ViTs (L14, L17–L22)
def test_L14_int8_export_names_each_unreadable_calibration_image(fitted, tmp_path):
    pytest.importorskip("onnxruntime.quantization")
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "a.png").write_bytes(b"not a png")
    (calib / "b.png").write_bytes(good_png(fitted[1]))
    model = tmp_path / "m.ckpt"
    fitted[0].save(model)
    r = CliRunner().invoke(main, ["export", str(model), "--out", str(tmp_path / "q.onnx"),
                                                  "--int8", str(calib)])
    assert r.exit_code == 0, r.output
    assert "skipped calibration image" in r.stderr and "a.png" in r.stderr and "1 calibration images" in r.output


def test_L17_aupimo_is_nan_where_the_range_cannot_be_reached():
    from costfilter.metrics.pimo import aupimo

    rng = np.random.default_rng(0)
    maps = np.round(rng.uniform(size=(8, 64, 64)) * 255) / 255  # 8-bit maps: each top value held by many pixels
    masks = np.zeros(maps.shape, dtype=bool)
    masks[0, 10:20, 10:20] = True
    maps[0][masks[0]] = 1.0
    normal_max_share = (maps[1:] == maps[1:].max()).mean()
    assert normal_max_share > 1e-3  # the highest normal score alone fires on more than the range's start
    assert np.isnan(aupimo(maps, masks, (1e-3, 1e-2)).mean)


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    import torch

    folder = tmp_path_factory.mktemp("vit") / "dino"
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                                    patch_size=14, image_size=28)
    transformers.Dinov2Model(cfg).save_pretrained(folder, safe_serialization=True)
    return folder


def test_L18_L20_a_vit_without_layers_or_size_gets_its_middle_blocks_and_a_patch_multiple(vit_folder, tmp_path):
    from costfilter import Detector
    from costfilter.config import FeatureConfig
    from costfilter.config_rules import hf_defaults

    root = make_mvtec(tmp_path / "m", n_train=4)
    out = tmp_path / "v.ckpt"
    r = CliRunner().invoke(main, ["fit", str(root), "--backbone", f"hf:{vit_folder}",
                                                  "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output + r.stderr
    f = Detector.load(out, progress=False).config.features
    assert f.layers == (1, 2, 3, 4) and f.image_size == 252 and "blocks 1–4 of 4" in r.stderr
    # a 12-block DINOv2: the middle blocks 3–10 in two groups (the reference's), not the CNN's [3, 5]
    big = tmp_path / "big"
    big.mkdir()
    (big / "config.json").write_text(json.dumps({"model_type": "dinov2", "num_hidden_layers": 12, "patch_size": 14}))
    feats = FeatureConfig(backbone=f"hf:{big}")
    hf_defaults(feats, layers_given=False, size_given=False)
    assert (feats.layers, feats.layer_groups, feats.image_size) == (tuple(range(3, 11)), 2, 252)


def test_L19_weights_under_other_key_names_are_a_one_line_error(vit_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "meta"
    shutil.copytree(vit_folder, folder)
    (weights,) = folder.glob("*.safetensors")
    state = load_file(weights)
    renamed = {k.replace("encoder.layer.", "blocks.").replace("attention.attention.query", "attn.qkv"): v
               for k, v in state.items()}
    save_file(renamed, weights, metadata={"format": "pt"})
    root = make_mvtec(tmp_path / "m", n_train=4)
    r = CliRunner().invoke(main, ["fit", str(root), "--backbone", f"hf:{folder}", "--image-size", "28",
                                  "--layers", "1,2", "--out", str(tmp_path / "x.ckpt"), "-q"])
    assert r.exit_code == 2 and "do not fit its config.json" in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


def test_L21_L22_a_relative_vit_folder_loads_from_anywhere_and_info_shows_groups(vit_folder, tmp_path, monkeypatch):
    work = tmp_path / "a"
    work.mkdir()
    shutil.copytree(vit_folder, work / "vit")
    root = make_mvtec(tmp_path / "m", n_train=4)
    monkeypatch.chdir(work)
    r = CliRunner().invoke(main, ["fit", str(root), "--backbone", "hf:vit", "--layers", "1,2,3,4",
                                  "--layer-groups", "2", "--image-size", "28", "--out", "m.ckpt", "-q"])
    assert r.exit_code == 0, r.output
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "pred"
    r = CliRunner().invoke(main, ["predict", "a/m.ckpt", str(root / "alpha" / "test"), "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    info = CliRunner().invoke(main, ["info", "a/m.ckpt"])
    assert "layers [1, 2, 3, 4] in 2 groups" in info.output and "transformers " in info.output
    assert str(work / "vit") in info.output
