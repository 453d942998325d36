"""Regression tests for the defects of the December probe (``shared/design/probe-2026-12.md``),
one test per defect, named after it. What needs a live server under signals or a full disk is
also in the robustness benchmark (``python -m benchmarks.robustness``)."""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_mvtec, read_results, save, small_config
from PIL import Image

from costfilter import Detector
from costfilter.cli import main
from costfilter.decisions import Thresholds
from costfilter.errors import CheckpointError, CostfilterError, DataError
from costfilter.toy_images import planted_defect, texture


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A fitted checkpoint on a tiny MVTec tree: ``(tmp, root, ckpt)``."""
    tmp = tmp_path_factory.mktemp("probe")
    root = make_mvtec(tmp / "data", categories=("alpha",))
    det = Detector(small_config(), progress=False).fit(root)
    ckpt = tmp / "m.ckpt"
    det.save(ckpt)
    return tmp, root, ckpt


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(r, *words: str) -> None:
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.output
    for w in words:
        assert w in errors[0], r.output


def images(folder: Path, n: int, seed: int = 0, prefix: str = "img") -> list[Path]:
    rng = np.random.default_rng(seed)
    return [save(texture(rng), folder / f"{prefix}{i}.png") for i in range(n)]


# ----------------------------------------------------------------------------- data loss
def test_f1_out_in_an_input_folder_is_refused_and_inputs_stay(model):
    tmp, _root, ckpt = model
    p = tmp / "f1"
    a, b = images(p, 2)
    os.replace(b, p / "img0_overlay.png")  # an input named like an output of img0.png
    before = {f.name: md5(f) for f in p.iterdir()}
    one_line_error(run("predict", ckpt, p, "--out", p, "--force", "-q"), "input folder")
    one_line_error(run("predict", ckpt, a, "--out", p, "--force", "-q"), "holds the input")
    one_line_error(run("predict", ckpt, p, "--out", tmp, "--force", "-q"), "holds the input")
    assert {f.name: md5(f) for f in p.iterdir()} == before
    # An output folder inside the input folder is fine, and its pictures are never inputs.
    for _ in range(2):
        r = run("predict", ckpt, p, "--out", p / "scored", "--force", "-q")
        assert r.exit_code == 0, r.output
        assert len(read_results(p / "scored")) == 2
    assert {f.name: md5(f) for f in p.iterdir() if f.is_file()} == before
    # --force removes only pictures an earlier run listed under our own names.
    keep = p / "scored" / "notes.png"
    keep.write_bytes(b"mine")
    rows = (p / "scored" / "results.jsonl").read_text().splitlines()
    rows.append(json.dumps({"image": "x", "overlay": "notes.png", "mask": "../img0.png"}))
    (p / "scored" / "results.jsonl").write_text("\n".join(rows) + "\n")
    assert run("predict", ckpt, p, "--out", p / "scored", "--force", "-q").exit_code == 0
    assert keep.read_bytes() == b"mine" and {f.name: md5(f) for f in p.iterdir() if f.is_file()} == before


def test_f2_one_overlay_per_image_when_stems_repeat(model):
    from costfilter.result_files import _unique_stems

    tmp, _root, ckpt = model
    rng = np.random.default_rng(1)
    save(texture(rng), tmp / "f2" / "A" / "x.png")
    save(texture(rng), tmp / "f2" / "A" / "x_2.png")
    save(planted_defect(rng, 48)[0], tmp / "f2" / "B" / "x.png")
    Image.open(tmp / "f2" / "B" / "x.png").save(tmp / "f2" / "B" / "X.jpg")
    out = tmp / "f2out"
    r = run("predict", ckpt, tmp / "f2" / "A", tmp / "f2" / "B", "--out", out, "-q")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in open(out / "results.jsonl")]
    assert len(rows) == 4 and len({r["overlay"] for r in rows}) == 4 and len({r["mask"] for r in rows}) == 4
    assert all((out / r["overlay"]).is_file() for r in rows)
    stems = _unique_stems(["a/x.png", "a/x_2.png", "b/x.jpg", "c/X.png"])
    assert len({s.lower() for s in stems}) == 4


# ------------------------------------------------------------------------ the service
@pytest.fixture
def service(model, tmp_path):
    from fastapi.testclient import TestClient

    from costfilter.serve.app import create_app
    from costfilter.serve.store import HistoryStore

    _, root, ckpt = model
    det = Detector.load(ckpt, progress=False)
    store = HistoryStore(tmp_path / "st")
    client = TestClient(create_app(det, store), base_url="http://localhost")
    png = (root / "alpha" / "test" / "good" / "000.png").read_bytes()
    yield client, store, png
    store.dispose()


def post(client, png: bytes, name: str = "a.png", headers=None):
    return client.post("/predict", files={"file": (name, png, "image/png")}, headers=headers or {})


def test_f3_service_refuses_what_it_cannot_store(service):
    client, store, png = service
    assert post(client, png).status_code == 200
    shutil.rmtree(store.root)  # a cleaner of /tmp or runs/
    r = post(client, png)
    assert r.status_code == 503 and "gone" in r.json()["detail"]
    h = client.get("/health").json()
    assert h["status"] == "degraded" and "gone" in h["problem"]
    assert not store.root.exists()  # nothing recreated, nothing acknowledged


def test_f3_replaced_database_is_noticed(service):
    client, store, png = service
    assert post(client, png).status_code == 200
    db = store.root / "history.sqlite3"
    os.replace(db, store.root / "moved.sqlite3")
    db.write_bytes(b"")
    r = post(client, png)
    assert r.status_code == 503 and "deleted or replaced" in r.json()["detail"]
    assert client.get("/health").json()["status"] == "degraded"


def test_f4_non_finite_thresholds_are_refused_everywhere(model, tmp_path):
    from costfilter.checkpoint import load_checkpoint, save_checkpoint

    _tmp, root, ckpt = model
    for bad in ("nan", "inf", "-inf"):
        one_line_error(run("calibrate", ckpt, root / "alpha" / "test" / "good", "--threshold", bad,
                           "--out", tmp_path / f"{bad}.ckpt", "-q"), "finite")
        assert not (tmp_path / f"{bad}.ckpt").exists()
    with pytest.raises(CostfilterError, match="finite"):
        Thresholds(image=math.nan, pixel=1.0, n_calibration=3, image_false_reject=0.0)
    det = Detector.load(ckpt, progress=False)
    with pytest.raises(CostfilterError, match="finite"):
        det.set_operating_point(threshold=float("nan"))
    # A crafted file with a valid hash and an infinite threshold is refused on load.
    tensors, config, state, _ = load_checkpoint(ckpt)
    state["thresholds"]["image"] = math.inf
    crafted = tmp_path / "inf.ckpt"
    save_checkpoint(crafted, tensors, config, state)
    with pytest.raises(CheckpointError, match="finite"):
        Detector.load(crafted, progress=False)
    one_line_error(run("info", crafted), "finite")


def test_f5_exif_orientation_is_applied_before_sizes(model, tmp_path):
    _tmp, _root, ckpt = model
    rng = np.random.default_rng(5)
    upright = np.concatenate([texture(rng), texture(rng)], axis=1)[:40]  # 40 × 96: wide
    upright[8:20, 10:30] = rng.integers(0, 255, (12, 20, 3))  # a noise patch
    Image.fromarray(upright).save(tmp_path / "plain.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned; displayed upright after a 90° turn
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rot6.png", exif=exif.tobytes())
    from costfilter.data.imageio import decode

    a, sa = decode(tmp_path / "plain.png")
    b, sb = decode(tmp_path / "rot6.png")
    assert sa == sb == (40, 96) and np.array_equal(a, b)
    det = Detector.load(ckpt, progress=False)
    pa, pb = det.predict([tmp_path / "plain.png", tmp_path / "rot6.png"])
    assert pa.size == pb.size == (40, 96)
    assert pa.score == pytest.approx(pb.score, rel=1e-5)
    assert [r.box for r in pa.regions(pa.score * 0.5)] == [r.box for r in pb.regions(pa.score * 0.5)]
    out = tmp_path / "out"
    assert run("predict", ckpt, tmp_path / "plain.png", tmp_path / "rot6.png", "--out", out, "-q").exit_code == 0
    assert Image.open(out / "rot6_overlay.png").size == Image.open(out / "plain_overlay.png").size == (96, 40)


def test_f6_predict_recurses_into_subfolders(model, tmp_path):
    _tmp, root, ckpt = model
    images(tmp_path / "n", 1)
    (tmp_path / "n" / "sub").mkdir()
    shutil.copy(root / "alpha" / "test" / "spot" / "000.png", tmp_path / "n" / "sub" / "deep.png")
    r = run("predict", ckpt, tmp_path / "n", "--out", tmp_path / "o", "-q")
    assert r.exit_code == 0, r.output
    assert set(read_results(tmp_path / "o")) == {"img0.png", "deep.png"}
    assert read_results(tmp_path / "o")["deep.png"]["decision"] == "reject"
    # Only sub-folders, a glob and a list file: the sources the Ray engine takes.
    r = run("predict", ckpt, tmp_path / "n" / "sub" / "..", "--out", tmp_path / "o2", "-q")
    assert r.exit_code == 0 and len(read_results(tmp_path / "o2")) == 2
    (tmp_path / "list.txt").write_text("n/img0.png\nn/sub/deep.png\n")
    r = run("predict", ckpt, str(tmp_path / "n" / "**" / "*.png"), tmp_path / "list.txt", "--out", tmp_path / "o3", "-q")
    assert r.exit_code == 0 and len(read_results(tmp_path / "o3")) == 2  # each file once


def test_f7_output_folder_is_never_a_source(tmp_path):
    from costfilter.sources import expand_sources

    images(tmp_path / "r", 2)
    images(tmp_path / "r" / "scored", 2, prefix="x_overlay")
    assert len(expand_sources([str(tmp_path / "r")])) == 4
    kept = expand_sources([str(tmp_path / "r")], exclude=tmp_path / "r" / "scored")
    assert sorted(Path(p).name for p in kept) == ["img0.png", "img1.png"]
    kept = expand_sources([str(tmp_path / "r" / "**" / "*.png")], exclude=tmp_path / "r" / "scored")
    assert len(kept) == 2
    with pytest.raises(CostfilterError, match="outside the output folder"):
        expand_sources([str(tmp_path / "r" / "scored")], exclude=tmp_path / "r" / "scored")


def test_f8_one_file_is_one_row_however_it_is_spelled(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    from costfilter.distributed.store import ResultStore
    from costfilter.sources import expand_sources

    (a,) = images(tmp_path / "rb", 1)
    monkeypatch.chdir(tmp_path)
    spelled = ["rb/img0.png", str(a), "rb/../rb/img0.png"]
    store = ResultStore(tmp_path / "o", "m" * 64)
    for i, s in enumerate(spelled):
        store.add([{"image": s, "sha256": "f" * 64, "score": float(i), "decision": "pass", "model_sha256": "m" * 64}])
    table = store.finish()
    assert table.num_rows == 1 and table["score"].to_pylist() == [2.0]
    assert set(ResultStore(tmp_path / "o", "m" * 64).done()) == {os.path.realpath(a)}
    # A glob through a symlink loop lists the file once.
    (tmp_path / "gl" / "a").mkdir(parents=True)
    shutil.copy(a, tmp_path / "gl" / "a" / "x.png")
    os.symlink("..", tmp_path / "gl" / "a" / "up")
    assert len(expand_sources(["gl/**/*.png"])) == 1


def test_f9_backbone_weights_load_strictly_and_are_covered_by_the_hash(tmp_path):
    from safetensors.torch import save_file

    from costfilter.backbones.efficientnet_lite import weights_file
    from costfilter.backbones.timm_backbone import load_weights

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    torch.save({"totally.unrelated.weight": torch.zeros(3)}, tmp_path / "wrong.pt")
    torch.save({}, tmp_path / "empty.pt")
    torch.save(torch.zeros(3), tmp_path / "bare.pt")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "wrong.safetensors"))
    for name, words in (("wrong.pt", "not in the file"), ("empty.pt", "holds no weights"),
                        ("bare.pt", "holds no weights"), ("wrong.safetensors", "not in the file")):
        before = {k: v.clone() for k, v in net.state_dict().items()}
        with pytest.raises(CostfilterError, match=words):
            load_weights(net, str(tmp_path / name))
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    good = {k: torch.full_like(v, 0.5) for k, v in net.state_dict().items()}
    torch.save({"state_dict": dict(good, **{"head.fc.weight": torch.zeros(1)})}, tmp_path / "good.pt")
    load_weights(net, str(tmp_path / "good.pt"))  # a classifier head beyond the network is fine
    assert all(torch.equal(good[k], v) for k, v in net.state_dict().items())
    # A model fitted with a weights file refuses to load once that file has changed.
    weights = tmp_path / "lite0.pth"
    shutil.copy(weights_file("efficientnet_lite0"), weights)
    root = make_mvtec(tmp_path / "data", categories=("alpha",), n_train=4)
    cfg = small_config()
    cfg.features.weights = str(weights)
    ckpt = tmp_path / "w.ckpt"
    Detector(cfg, progress=False).fit(root).save(ckpt)
    Detector.load(ckpt, progress=False)
    state = torch.load(weights, weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 1
    torch.save(state, weights)
    with pytest.raises(CheckpointError, match="have changed since the fit"):
        Detector.load(ckpt, progress=False)


def test_f10_calibrate_on_the_fit_images_is_refused(model, tmp_path):
    _tmp, root, ckpt = model
    one_line_error(run("calibrate", ckpt, root / "alpha" / "train" / "good", "--out", tmp_path / "c.ckpt", "-q"),
                   "used to fit this model")
    # A copy under another name is the same image.
    shutil.copy(root / "alpha" / "train" / "good" / "000.png", tmp_path / "renamed.png")
    one_line_error(run("calibrate", ckpt, tmp_path / "renamed.png", "--out", tmp_path / "c.ckpt", "-q"),
                   "1 of the 1 images")
    r = run("calibrate", ckpt, root / "alpha" / "test" / "good", "--out", tmp_path / "c.ckpt", "-q")
    assert r.exit_code == 0, r.output


def test_f11_degenerate_calibration_is_refused(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(small_config().to_yaml())
    (one,) = images(tmp_path / "one", 1)
    one_line_error(run("fit", tmp_path / "one", "--format", "folder", "--config", cfg, "--out", tmp_path / "1.ckpt",
                       "-q"), "at least 2 different good images, got 1")
    (tmp_path / "same").mkdir()
    for i in range(5):
        shutil.copy(one, tmp_path / "same" / f"{i}.png")
    one_line_error(run("fit", tmp_path / "same", "--format", "folder", "--config", cfg, "--out", tmp_path / "5.ckpt",
                       "-q"), "all the same image")
    assert not (tmp_path / "1.ckpt").exists() and not (tmp_path / "5.ckpt").exists()


# ------------------------------------------------------------------------ keep going
def test_f12_an_unreadable_image_is_an_error_row_and_the_rest_are_scored(model, tmp_path):
    _tmp, _root, ckpt = model
    _a, b, c = images(tmp_path / "d", 3)
    b.write_bytes(b.read_bytes()[:200])  # truncated
    out = tmp_path / "o"
    r = run("predict", ckpt, tmp_path / "d", "--out", out, "-q")
    assert r.exit_code == 1 and "1 images could not be scored" in r.output, r.output
    rows = read_results(out)
    assert [rows[n]["decision"] for n in ("img0.png", "img1.png", "img2.png")] == ["pass", "error", "pass"]
    assert "img1.png" in rows["img1.png"]["error"] and "1 error" in r.output
    assert [row["image"].split("/")[-1] for row in csv.DictReader(open(out / "results.csv"))] == [
        "img0.png", "img1.png", "img2.png"]
    if os.geteuid() != 0:  # root reads a mode-000 file anyway
        os.chmod(c, 0)
        with pytest.raises(DataError, match="cannot read .*ermission denied"):
            Detector.load(ckpt, progress=False).predict([c])


def test_f13_an_unwritable_out_fails_before_the_work(model, tmp_path):
    _tmp, root, ckpt = model
    (tmp_path / "afile").write_text("x")
    one_line_error(run("fit", root, "--out", tmp_path / "afile" / "m.ckpt", "-q"), "not a folder")
    (tmp_path / "adir").mkdir()
    one_line_error(run("fit", root, "--out", tmp_path / "adir", "--force", "-q"), "is a folder")
    one_line_error(run("predict", ckpt, root / "alpha" / "test" / "good", "--out", tmp_path / "afile" / "p", "-q"),
                   "not a folder")
    from benchmarks.probe_cases import NOCAP, nocap_works, run_cli

    if not nocap_works():
        pytest.skip("setpriv cannot drop capabilities here, so a read-only folder cannot be tested as root")
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    for args in (["fit", root, "--out", ro / "m.ckpt", "-q"],
                 ["predict", ckpt, root / "alpha" / "test" / "good", "--out", ro / "p", "-q"],
                 ["predict", ckpt, root / "alpha" / "test" / "good", "--out", ro, "-q"]):
        # as a user without root's permission-override capabilities, so chmod binds
        r = run_cli([str(a) for a in args], prefix=NOCAP, timeout=300)
        assert r["rc"] == 2 and "Traceback" not in r["stderr"] and "cannot write there" in r["stderr"], r["stderr"]
        assert "fitted" not in r["stdout"]
    os.chmod(ro, 0o755)


def test_f14_disk_full_is_one_line_and_a_507(service, model, tmp_path, monkeypatch):
    from costfilter import atomic
    from costfilter.serve import store as store_module

    client, store, png = service
    real = shutil.disk_usage
    monkeypatch.setattr(store_module.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=1024))
    r = post(client, png)
    assert r.status_code == 507 and "no space left" in r.json()["detail"]
    assert client.get("/health").json()["problem"].startswith("no space left")
    monkeypatch.setattr(store_module.shutil, "disk_usage", real)

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    # The disk fills while the record's files are synced (fsync reports ENOSPC): written files go again.
    with monkeypatch.context() as m:
        m.setattr(atomic.os, "fsync", lambda fd: full("fd", None))
        r = post(client, png)
    assert r.status_code == 507 and store.list()[0] == 0
    assert not any(p.is_file() for p in store.files.rglob("*"))
    # The CLI: a full disk while writing pictures is one line, not a traceback.
    _, root, ckpt = model
    from costfilter import result_files

    monkeypatch.setattr(result_files, "save_png", lambda *a: full(a[1], None))
    one_line_error(run("predict", ckpt, root / "alpha" / "test" / "good", "--out", tmp_path / "o", "-q"),
                   "No space left on device")


def test_f15_a_read_only_history_database_is_refused_at_start(tmp_path):
    from costfilter.serve.store import HistoryStore

    HistoryStore(tmp_path / "st").dispose()
    db = (tmp_path / "st" / "history.sqlite3").resolve()
    with pytest.raises(CostfilterError, match="cannot open the history database for writing"):
        HistoryStore(tmp_path / "st", f"sqlite:///file:{db}?mode=ro&uri=true")


def test_f16_config_values_and_checkpoint_tensors_are_checked(model, tmp_path):
    from costfilter.checkpoint import load_checkpoint, save_checkpoint

    _tmp, root, ckpt = model
    for text, words in (("batch_size: 0", "batch_size must be ≥ 1"), ("seed: abc", "seed: expected int"),
                        ("memory: {bank_size: 1.5}", "bank_size: expected int"),
                        ("features: {layers: [3, x]}", "layers[1]: expected int")):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(text)
        one_line_error(run("fit", root, "--config", cfg, "--out", tmp_path / "x.ckpt", "-q"), *words.split(": ", 1)[:1])
    tensors, config, state, _ = load_checkpoint(ckpt)
    bank = tensors["memory.bank"]
    edits = {
        "batch0": (lambda t, c, s: c.update(batch_size=0), "batch_size"),
        "high": (lambda t, c, s: s["thresholds"].update(image="high"), "image threshold"),
        "float64": (lambda t, c, s: t.update({"memory.bank": bank.double()}), "dtype"),
        "width10": (lambda t, c, s: t.update({"memory.bank": bank[:, :10].contiguous()}), "does not fit"),
        "empty": (lambda t, c, s: t.update({"memory.bank": bank[:0].contiguous()}), "does not fit"),
        "owners": (lambda t, c, s: t.update({"memory.owners": tensors["memory.owners"][:1].contiguous()}), "rows"),
    }
    for name, (edit, words) in edits.items():
        t, c, s = dict(tensors), json.loads(json.dumps(config)), json.loads(json.dumps(state))
        edit(t, c, s)
        path = tmp_path / f"{name}.ckpt"
        save_checkpoint(path, t, c, s)  # correctly re-hashed: the hash is not a secret
        with pytest.raises(CheckpointError, match=words):
            Detector.load(path, progress=False)
        one_line_error(run("info", path), words)


def test_f17_a_foreign_results_table_is_one_line(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from costfilter.distributed.store import ResultStore

    (tmp_path / "o").mkdir()
    pq.write_table(pa.table({"image": ["x"]}), tmp_path / "o" / "results.parquet")
    with pytest.raises(CostfilterError, match="not a costfilter results table .*move it out"):
        ResultStore(tmp_path / "o", "m" * 64)
    ResultStore(tmp_path / "o", "m" * 64, force=True)


def test_f18_what_a_killed_run_left_is_cleaned_or_reused(model, tmp_path):
    from costfilter.atomic import write_text

    _tmp, root, ckpt = model
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    out = tmp_path / "o"
    (out / f".costfilter-partial-{dead}.abc").mkdir(parents=True)
    (out / f".costfilter-partial-{dead}.abc" / "x_overlay.png").write_bytes(b"half")
    r = run("predict", ckpt, root / "alpha" / "test" / "good", "--out", out, "-q")
    assert r.exit_code == 0, r.output
    assert not list(out.glob(".costfilter-partial-*"))
    stale = tmp_path / f".m.ckpt.{dead}.k3y.tmp"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".m.ckpt.{os.getpid()}.k3z.tmp"
    live.write_bytes(b"being written")
    Detector.load(ckpt, progress=False).save(tmp_path / "m.ckpt")
    assert not stale.exists() and live.exists()
    write_text(tmp_path / "t.txt", "x")
    # A Ray results folder whose driver died before its first flush is still ours.
    pytest.importorskip("pyarrow")
    from costfilter.distributed.store import ResultStore

    ResultStore(tmp_path / "ray", "m" * 64)
    (tmp_path / "ray" / f".a_overlay.png.{dead}.x1.tmp").write_bytes(b"cut short")
    ResultStore(tmp_path / "ray", "m" * 64)
    assert not list((tmp_path / "ray").glob("*.tmp"))


def test_f19_tiled_scoring_streams_its_tiles():
    from costfilter.tiling import cut_tiles, score_tiled, stitch, tile_boxes, top_mean

    rng = np.random.default_rng(19)
    image = rng.integers(0, 255, (150, 230, 3), dtype=np.uint8)
    calls = []

    def tile_maps(tiles):
        calls.append(len(tiles))
        return torch.stack([torch.from_numpy(t[..., 0].astype(np.float32))[:8, :8].clone() for t in tiles])

    amap, score = score_tiled(image, 40, 8, 1.0, tile_maps, chunk=5)
    assert max(calls) <= 5 and sum(calls) == len(tile_boxes((150, 230), 40, 8))
    boxes = tile_boxes((150, 230), 40, 8)
    whole = stitch(tile_maps(cut_tiles(image, boxes)), boxes, (150, 230), 8)
    assert torch.allclose(amap, whole) and score == pytest.approx(top_mean(whole, 1.0))


def test_f20_csv_cells_are_not_formulas(model, tmp_path):
    from costfilter.result_files import csv_safe

    _tmp, root, ckpt = model
    name = '=HYPERLINK("http:evil","x").png'
    shutil.copy(root / "alpha" / "test" / "good" / "000.png", tmp_path / name)
    out = tmp_path / "o"
    assert run("predict", ckpt, tmp_path / name, "--out", out, "-q").exit_code == 0
    row = next(csv.DictReader(open(out / "results.csv")))
    assert row["overlay"].startswith("'=") and row["mask"].startswith("'=")
    assert json.loads((out / "results.jsonl").read_text())["overlay"].startswith("=")  # JSON keeps the name
    assert [csv_safe(v) for v in ("+1", "-x", "@a", "\tb", "ok", 3.5)] == ["'+1", "'-x", "'@a", "'\tb", "ok", 3.5]


def test_f21_outputs_follow_the_umask(model, tmp_path):
    from costfilter.atomic import write_text

    old = os.umask(0o002)
    try:
        write_text(tmp_path / "a.txt", "x")
        Detector.load(model[2], progress=False).save(tmp_path / "m.ckpt")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o664
    assert (tmp_path / "m.ckpt").stat().st_mode & 0o777 == 0o664


def test_f22_multi_frame_images_are_refused(model, tmp_path):
    from costfilter.data.imageio import decode

    rng = np.random.default_rng(22)
    frames = [Image.fromarray(texture(rng)) for _ in range(2)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=[frames[1].rotate(180)])
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:])
    for name in ("anim.png", "pages.tif", "anim.webp"):
        with pytest.raises(DataError, match="2 frames"):
            decode(tmp_path / name)
    r = run("predict", model[2], tmp_path, "--out", tmp_path / "o", "-q")
    assert r.exit_code == 1 and {v["decision"] for v in read_results(tmp_path / "o").values()} == {"error"}


def test_f23_a_fifo_is_refused_not_waited_on(model, tmp_path):
    os.mkfifo(tmp_path / "f.png")
    from costfilter.data.imageio import decode

    with pytest.raises(DataError, match="not a regular file"):
        decode(tmp_path / "f.png")
    p = subprocess.run([sys.executable, "-m", "costfilter.cli", "predict", str(model[2]), str(tmp_path / "f.png"),
                        "--out", str(tmp_path / "o"), "-q"], check=False, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "not a regular file (a FIFO)" in p.stderr


def test_f24_service_details(model, tmp_path):
    from fastapi.testclient import TestClient

    from costfilter.serve.app import create_app
    from costfilter.serve.store import HistoryStore

    _, root, ckpt = model
    store = HistoryStore(tmp_path / "st")
    client = TestClient(create_app(Detector.load(ckpt, progress=False), store, api_key="s3cret"),
                        base_url="http://localhost")
    png = (root / "alpha" / "test" / "good" / "000.png").read_bytes()
    assert client.head("/health").status_code == 200 and client.head("/").status_code == 200
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert post(client, png, headers={"Authorization": f"{scheme} s3cret"}).status_code == 200
    assert post(client, png, headers={"Authorization": "bearer wrong"}).status_code == 401
    key = {"Authorization": "Bearer s3cret"}
    two = client.post("/predict", files=[("file", ("a.png", png, "image/png")), ("file", ("b.png", png, "image/png"))],
                      headers=key)
    assert two.status_code == 400 and "one image per request" in two.json()["detail"]
    unnamed = client.post("/predict", files={"file": ("", png, "image/png")}, headers=key)
    assert unnamed.status_code == 422 and "with a file name" in unnamed.json()["detail"]
    long = client.get("/results/" + "x" * 60_000, headers=key)
    assert long.status_code == 404 and len(long.json()["detail"]) < 200
    assert store.list()[0] == 3
    store.dispose()


def test_f25_clear_messages(model, tmp_path):
    from costfilter.cli.deploy import _listen

    one_line_error(run("info", tmp_path), "is a folder")
    one_line_error(run("info", "/dev/null"), "not a regular file")
    onnx_like = tmp_path / "m.ckpt"
    onnx_like.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x052.13" + b"\xff" * 64)
    one_line_error(run("info", onnx_like), "name it .onnx")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(CostfilterError, match="cannot listen on 127.0.0.1"):
            _listen("127.0.0.1", taken.getsockname()[1])
