"""The inspection service: predict → stored record and files, history, bad uploads refused with
nothing written, OpenAPI, concurrent requests, and a kill mid-request that leaves the database whole."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")
httpx = pytest.importorskip("httpx")

from conftest import free_port, good_png, planted_defect_png, start_server, texture_png
from fastapi.testclient import TestClient

from costfilter.serve import HistoryStore, create_app


@pytest.fixture
def client(fitted, tmp_path):
    det, root = fitted
    store = HistoryStore(tmp_path / "store")
    with TestClient(create_app(det, store, model_name="m.ckpt", max_upload_mb=0.05, allowed_hosts=["testserver"])) as c:
        c.good_png = good_png(root)
        yield c, store


def _post(c, data: bytes, name="part.png", ctype="image/png", **params):
    return c.post("/predict", files={"file": (name, data, ctype)}, params=params)


def test_predict_returns_decision_and_stores_everything(client):
    c, store = client
    r = _post(c, planted_defect_png(1), "bad.png", inline="true")
    assert r.status_code == 200, r.text
    bad = r.json()
    assert bad["decision"] == "reject" and bad["regions"] and bad["width"] == 48
    assert bad["model_version"].startswith("m.ckpt memory") and len(bad["image_sha256"]) == 64
    png = Image.open(io.BytesIO(__import__("base64").b64decode(bad["overlay_png_base64"])))
    assert png.size == (48, 48)
    good = _post(c, c.good_png, "good.png").json()
    assert good["decision"] == "pass" and good["score"] < bad["score"] and good["overlay_png_base64"] is None
    for kind, url in bad["links"].items():
        f = c.get(url)
        assert f.status_code == 200, kind
        assert Image.open(io.BytesIO(f.content)).size[0] > 0
    mask = np.asarray(Image.open(io.BytesIO(c.get(bad["links"]["mask"]).content)))
    assert mask.max() == 255 and set(np.unique(mask)) <= {0, 255}
    history = c.get("/results").json()
    assert history["total"] == 2 and [i["id"] for i in history["items"]] == [good["id"], bad["id"]]
    assert c.get("/results", params={"decision": "reject"}).json()["total"] == 1
    assert c.get(f"/results/{bad['id']}").json()["score"] == bad["score"]
    assert c.get("/results/nope").status_code == 404
    health = c.get("/health").json()
    assert health["status"] == "ok" and health["predictions"] == 2 and health["model"]["method"] == "memory"


@pytest.mark.parametrize("data,name,ctype,status,message", [
    (b"this is not an image", "notes.png", "image/png", 400, "notes.png: not an image file"),
    (b"", "empty.png", "image/png", 400, "empty upload"),
    (b"GIF89a....", "doc.txt", "text/plain", 415, "not an image type"),
    (None, "huge.png", "image/png", 413, "too large"),
])
def test_bad_uploads_get_4xx_and_nothing_is_written(client, data, name, ctype, status, message):
    c, store = client
    if data is None:  # a real image over the 0.05 MB limit of this app
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(buf, "PNG")
        data = buf.getvalue()
    r = _post(c, data, name, ctype)
    assert r.status_code == status and message in r.json()["detail"]
    assert store.list()[0] == 0
    assert not any(p.is_file() for p in store.files.rglob("*"))


def test_openapi_spec_describes_the_routes(client):
    c, _ = client
    spec = c.get("/openapi.json").json()
    assert {"/predict", "/health", "/results", "/results/{record_id}"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert c.get("/").text.startswith("<!doctype html>")


@pytest.fixture
def model_file(fitted, tmp_path):
    det, _ = fitted
    path = tmp_path / "m.ckpt"
    det.save(path)
    return path


def _hammer(port: int, n: int, workers: int, results: list, stop: threading.Event | None = None) -> list[threading.Thread]:
    """``workers`` threads, each posting until ``n`` requests in all were sent or ``stop`` is set
    (bounded: loopback only, at most n requests, each with a 30 s timeout)."""
    sent = iter(range(n))
    lock = threading.Lock()

    def work() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as cl:
            while stop is None or not stop.is_set():
                with lock:
                    i = next(sent, None)
                if i is None:
                    return
                data = planted_defect_png(i) if i % 2 else texture_png(i)
                try:
                    r = cl.post("/predict", files={"file": (f"p{i}.png", data, "image/png")})
                    results.append((i, r.status_code, r.json()))
                except httpx.HTTPError as exc:
                    results.append((i, None, str(exc)))

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    return threads


def test_concurrent_requests_are_all_recorded(model_file, tmp_path):
    port, store = free_port(), tmp_path / "store"
    proc = start_server(model_file, store, port)
    try:
        results: list = []
        for t in _hammer(port, 16, 6, results):
            t.join(120)
        assert len(results) == 16 and all(code == 200 for _, code, _ in results), results[:2]
        ids = {body["id"] for _, _, body in results}
        assert len(ids) == 16
        # each answer is its own image's, whatever the interleaving: every defect (odd i) is
        # rejected and scores above every good texture
        assert all(body["decision"] == "reject" for i, _, body in results if i % 2)
        assert max(b["score"] for i, _, b in results if i % 2 == 0) < min(b["score"] for i, _, b in results if i % 2)
        assert all(body["filename"] == f"p{i}.png" for i, _, body in results)
        page = httpx.get(f"http://127.0.0.1:{port}/results", params={"limit": 100}).json()
        assert page["total"] == 16 and {i["id"] for i in page["items"]} == ids
    finally:
        proc.terminate()
        proc.wait(10)


def test_database_survives_a_kill_mid_request(model_file, tmp_path):
    port, store = free_port(), tmp_path / "store"
    proc = start_server(model_file, store, port)
    results: list = []
    stop = threading.Event()
    threads = _hammer(port, 200, 4, results, stop)
    deadline = time.monotonic() + 60
    while sum(code == 200 for _, code, _ in results) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # requests are in flight: 4 clients never wait for one another
    proc.wait(10)
    stop.set()
    for t in threads:
        t.join(60)
    answered = {body["id"] for _, code, body in results if code == 200}
    assert len(answered) >= 5 and any(code is None for _, code, _ in results)  # some were cut off
    db = store / "history.sqlite3"
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = con.execute("SELECT id, files FROM predictions").fetchall()
    stored = {rid for rid, _ in rows}
    assert answered <= stored  # every answered prediction was committed
    for rid, files in rows:  # and every committed row has all its files, whole
        for name in json.loads(files).values():
            path = store / "files" / rid[:2] / rid / name
            assert path.is_file()
            Image.open(path).load()
    proc = start_server(model_file, store, port)  # the service comes back on the same history
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["predictions"] == len(rows)
        r = httpx.post(f"http://127.0.0.1:{port}/predict", files={"file": ("again.png", texture_png(99), "image/png")})
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)


def test_generic_binary_uploads_are_decoded(client):
    """curl and many HTTP libraries send application/octet-stream for files: decoding decides."""
    c, store = client
    assert _post(c, planted_defect_png(3), "part.png", "application/octet-stream").status_code == 200
    r = _post(c, b"%PDF-1.7 not an image", "part.pdf", "application/octet-stream")
    assert r.status_code == 400 and "part.pdf: not an image file" in r.json()["detail"]
    assert store.list()[0] == 1


def test_each_inspection_reports_its_stages_once_and_in_metrics(fitted, tmp_path):
    """Every stored image reports decode, model, draw, encode and store once each, non-negative,
    together no longer than the inspection itself; /metrics carries them, and the latency
    benchmark reads back the same sums from the scrape."""
    from benchmarks.latency import _stage_sums

    from costfilter.serve.inspection import Inspector, Item
    from costfilter.serve.metrics import STAGES

    det, root = fitted
    ins = Inspector(det, HistoryStore(tmp_path / "store"))
    seen: list[tuple[str, float]] = []
    ins.on_stage.append(lambda stage, s: seen.append((stage, s)))
    t0 = time.perf_counter()
    done = ins.inspect([Item("a.png", good_png(root)), Item("bad.png", b"not an image"),
                        Item("b.png", planted_defect_png(1))])
    wall = time.perf_counter() - t0
    assert [type(d).__name__ for d in done] == ["Inspected", "DataError", "Inspected"]
    assert sorted(s for s, _ in seen) == sorted(list(STAGES) * 2)  # the bad upload has no stage
    assert all(x >= 0 for _, x in seen) and sum(x for _, x in seen) <= wall
    sums = _stage_sums(ins.metrics.render().decode())
    for stage in STAGES:
        assert sums[stage][1] == 2
        assert sums[stage][0] == pytest.approx(sum(x for s, x in seen if s == stage), rel=1e-9)


def test_a_records_files_go_into_a_new_folder_whole_or_not_at_all(tmp_path, monkeypatch):
    """The store writes a record's files straight into a fresh folder (no temp and rename each),
    in steps: all of them synced, with the umask's mode; never into a folder that exists; and a
    failure part-way, in a write or a later sync, removes everything written."""
    from costfilter import atomic

    folder = tmp_path / "ab" / "abcdef"
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    old = os.umask(0o027)
    try:
        new = atomic.NewFolder(folder)
        new.write({"image.png": b"x" * 300_000})
        new.sync()
        new.write({"mask.png": b"m"})
        new.sync()
    finally:
        os.umask(old)
    monkeypatch.setattr(atomic.os, "fsync", real_fsync)
    assert len(synced) == 2  # each file once
    assert (folder / "image.png").read_bytes() == b"x" * 300_000 and (folder / "mask.png").read_bytes() == b"m"
    assert (folder / "mask.png").stat().st_mode & 0o777 == 0o640
    with pytest.raises(FileExistsError):
        atomic.NewFolder(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["image.png", "mask.png"]  # untouched

    calls = []
    real_write = os.write

    def fails_second(fd, data):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    new = atomic.NewFolder(tmp_path / "cd" / "cdef")
    new.write({"early": b"0"})
    with monkeypatch.context() as m:
        m.setattr(atomic.os, "write", fails_second)
        with pytest.raises(OSError, match="No space"):
            new.write({"a": b"1", "b": b"2"})
    assert len(calls) == 2 and not (tmp_path / "cd" / "cdef").exists()  # the early file went too
    # The sync may run on another thread, later: when it fails, the folder goes as well.
    new = atomic.NewFolder(tmp_path / "ef" / "efgh")
    new.write({"a": b"1"})

    def full(fd):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(atomic.os, "fsync", full)
        with pytest.raises(OSError, match="No space"):
            new.sync()
    assert not (tmp_path / "ef" / "efgh").exists()


def _record_row(record_id: str) -> dict:
    from costfilter.serve.store import utc_now

    return {"id": record_id, "created": utc_now(), "filename": "x.png", "image_sha256": "0" * 64, "width": 4,
            "height": 4, "score": 1.0, "decision": "pass", "typical_score": 0.5, "image_threshold": 2.0,
            "pixel_threshold": 2.0, "map_scale": 1.0, "model_sha256": "m" * 64, "model_version": "m",
            "regions": [], "station": None, "source": "upload"}


def test_a_record_begun_early_is_kept_whole_or_not_at_all(tmp_path, monkeypatch):
    """An upload's file is written and synced while the image is scored (``begin``): finished
    by ``add``, the record names all its files; dropped, or refused at the commit, its folder
    goes; a ``begin`` that failed is raised by ``add``, and an existing folder is not touched."""
    from sqlalchemy.exc import OperationalError

    from costfilter.serve import audit
    from costfilter.serve.store import StoreFull, StoreUnavailable

    store = HistoryStore(tmp_path / "s")
    a, b, c = "a" * 32, "b" * 32, "c" * 32
    row = store.add(_record_row(a), {"mask": ("mask.png", b"m")},
                    started=store.begin(a, {"image": ("image.png", b"img")}))
    assert row["files"] == {"image": "image.png", "mask": "mask.png"}
    assert store.get(a)["files"] == row["files"]
    assert [store.file_path(a, n).read_bytes() for n in ("image.png", "mask.png")] == [b"img", b"m"]

    dropped = store.begin(b, {"image": ("image.png", b"img")})
    store.discard(dropped)
    assert not store.file_path(b, "").exists() and store.get(b) is None

    again = store.begin(a, {"image": ("image.png", b"other")})  # an id in use: refused, untouched
    with pytest.raises(StoreUnavailable, match="already has files"):
        store.add(_record_row(a), {"mask": ("mask.png", b"x")}, started=again)
    assert store.file_path(a, "image.png").read_bytes() == b"img"
    mismatched = store.begin(b, {"image": ("image.png", b"i")})
    with pytest.raises(ValueError, match="was begun as"):  # a caller's mistake: it stays the caller's to drop
        store.add(_record_row(c), {}, started=mismatched)
    assert store.get(c) is None and not store.file_path(c, "").exists()
    store.discard(mismatched)
    assert not store.file_path(b, "").exists()

    def refused(*args, **kwargs):
        raise OperationalError("INSERT", {}, Exception("database or disk is full"))

    with monkeypatch.context() as m:
        m.setattr(audit, "append", refused)
        with pytest.raises(StoreFull, match="database is full"):
            store.add(_record_row(c), {"mask": ("mask.png", b"m")}, started=store.begin(c, {"image": ("i.png", b"i")}))
    assert not store.file_path(c, "").exists() and store.get(c) is None
    d = "d" * 32  # not begun: every file written by add itself
    assert store.add(_record_row(d), {"image": ("image.png", b"i"), "mask": ("mask.png", b"m")})["files"] == {
        "image": "image.png", "mask": "mask.png"}
    assert store.file_path(d, "image.png").read_bytes() == b"i"
    assert store.list()[0] == 2


def test_an_inspection_that_fails_leaves_no_files(fitted, tmp_path, monkeypatch):
    """The upload's file is written before the image is scored: when scoring or drawing fails,
    it is removed again, and nothing is recorded."""
    from costfilter.serve import inspection
    from costfilter.serve.inspection import Inspector, Item

    det, root = fitted
    store = HistoryStore(tmp_path / "store")
    ins = Inspector(det, store)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    with monkeypatch.context() as m:
        m.setattr(type(det), "predict", broken)
        with pytest.raises(RuntimeError, match="boom"):
            ins.inspect([Item("a.png", good_png(root)), Item("b.png", planted_defect_png(1))])
    with monkeypatch.context() as m:
        m.setattr(inspection, "analyse", broken)
        with pytest.raises(RuntimeError, match="boom"):
            ins.inspect([Item("a.png", good_png(root)), Item("b.png", planted_defect_png(1))])
    assert store.list()[0] == 0 and not any(p.is_file() for p in store.files.rglob("*"))
    assert isinstance(ins.inspect([Item("a.png", good_png(root))])[0], inspection.Inspected)
    assert sum(p.is_file() for p in store.files.rglob("*")) == 3  # image, mask, map
