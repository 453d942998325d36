"""Hostile and careless inputs: bounded decoding, masks of every mode, scores that cannot lie,
model files that cannot be edited or forged unnoticed, CLI outputs that never mislead. Each
case asserts a clear one-line error (or the right answer) and that nothing was written or changed."""

from __future__ import annotations

import io
import json
import math
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_mvtec, save, small_config, texture
from PIL import Image

from costfilter import Detector
from costfilter.checkpoint import load_checkpoint, save_checkpoint
from costfilter.cli import main
from costfilter.data import imageio
from costfilter.data.imageio import decode, read_image, read_mask, shrink_factor
from costfilter.decisions import Thresholds
from costfilter.errors import CheckpointError, DataError


@pytest.fixture
def pixel_limit():
    before = imageio.max_pixels()
    yield imageio.set_max_pixels
    imageio.set_max_pixels(before)


def test_images_over_the_pixel_limit_are_refused_from_the_header(tmp_path, pixel_limit):
    path = tmp_path / "big.png"
    Image.new("RGB", (3000, 2000)).save(path)
    pixel_limit(5_000_000)
    with pytest.raises(DataError, match=r"big.png: image is 3000x2000 \(6 MP\), over the limit of 5 MP \(--max-pixels\)"):
        read_image(path)
    pixel_limit(10_000_000)
    assert read_image(path).shape == (2000, 3000, 3)


def test_huge_images_are_box_reduced_while_decoded_and_keep_their_source_size(tmp_path):
    assert shrink_factor((480, 640), 256) == 1  # ordinary images keep the one resize
    assert shrink_factor((4000, 6000), 256) == 3
    arr = np.zeros((2100, 3000, 3), np.uint8)
    arr[1000:1100, 2000:2100] = 255
    for name in ("big.png", "big.jpg"):
        Image.fromarray(arr).save(tmp_path / name)
        image, source = decode(tmp_path / name, size=64)
        assert source == (2100, 3000) and max(image.shape[:2]) <= 3000 // 4 and min(image.shape[:2]) >= 4 * 64


def test_only_the_accepted_formats_are_decoded(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.gif")
    with pytest.raises(DataError, match="x.gif: GIF images are not accepted"):
        read_image(tmp_path / "x.gif")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "GIF")
    with pytest.raises(DataError, match="upload: GIF images are not accepted"):
        imageio.decode_image(buf.getvalue())


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "I;16", "1"])
def test_masks_read_alike_in_every_mode(tmp_path, mode):
    grey = np.zeros((20, 30), np.uint8)
    grey[5:9, 10:20] = 255
    img = Image.fromarray(grey)
    if mode == "LA":
        img = Image.merge("LA", (img, Image.new("L", img.size, 255)))  # opaque everywhere
    elif mode == "I;16":
        img = Image.fromarray(grey.astype(np.uint16) * 257)
    else:
        img = img.convert(mode)
    img.save(tmp_path / "m.png")
    assert ((read_mask(tmp_path / "m.png") > 0) == (grey > 0)).all()


def test_an_la_mask_gives_the_metrics_of_its_l_version(tmp_path, fitted):
    det, _ = fitted
    root = make_mvtec(tmp_path / "m", n_train=2)
    before = det.evaluate(root).per_category["alpha"]
    for mask in (root / "alpha" / "ground_truth").rglob("*.png"):
        grey = Image.open(mask).convert("L")
        Image.merge("LA", (grey, Image.new("L", grey.size, 255))).save(mask)
    assert det.evaluate(root).per_category["alpha"] == before


def test_whole_image_masks_give_undefined_pixel_metrics_not_a_crash(tmp_path, fitted):
    det, _ = fitted
    root = make_mvtec(tmp_path / "m", n_train=2, n_good=0)
    for mask in (root / "alpha" / "ground_truth").rglob("*.png"):
        save(np.full((48, 48), 255, np.uint8), mask)
    m = det.evaluate(root).per_category["alpha"]
    assert math.isnan(m["pixel_auroc"]) and math.isnan(m["aupro"]) and m["pixel_ap"] == 1.0


def test_a_score_that_is_not_a_number_never_passes():
    t = Thresholds(image=1.0, pixel=1.0, n_calibration=10, image_false_reject=0.0)
    assert [t.decide(x) for x in (float("nan"), float("inf"), 0.5)] == ["unknown", "unknown", "pass"]
    assert t.decide(0.5, typical=float("nan")) == "unknown"


def test_checkpoint_header_is_inside_the_hash_and_malformed_headers_are_one_line_errors(tmp_path, fitted):
    det, _ = fitted
    path = tmp_path / "m.ckpt"
    det.save(path)
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(path))
    for version, message in [("1", "content hash mismatch"), ("two", "malformed header .* not a number"),
                             ("99", "newer costfilter")]:
        save_file(tensors, str(tmp_path / "x.ckpt"), metadata=dict(meta, format_version=version))
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(tmp_path / "x.ckpt")


def test_signed_checkpoints_are_refused_under_another_key_and_unsigned_ones_under_any(tmp_path, fitted, monkeypatch):
    det, root = fitted
    monkeypatch.delenv("COSTFILTER_SIGN_KEY", raising=False)
    signed, unsigned = tmp_path / "s.ckpt", tmp_path / "u.ckpt"
    det.save(signed, sign_key="line-7 secret")
    det.save(unsigned)
    assert Detector.load(signed, sign_key="line-7 secret", progress=False).state.signature == "valid"
    assert Detector.load(signed, progress=False).state.signature == "unchecked"
    assert Detector.load(unsigned, progress=False).state.signature == "unsigned"
    with pytest.raises(CheckpointError, match="signature does not match"):
        Detector.load(signed, sign_key="another key", progress=False)
    monkeypatch.setenv("COSTFILTER_SIGN_KEY", "line-7 secret")
    with pytest.raises(CheckpointError, match="not signed, but a signing key is set"):
        Detector.load(unsigned, progress=False)
    r = CliRunner().invoke(main, ["info", str(signed)])
    assert r.exit_code == 0 and "signature    valid" in r.output


def test_info_fails_on_a_checkpoint_whose_method_does_not_fit_its_config(tmp_path, fitted):
    det, _ = fitted
    path = tmp_path / "m.ckpt"
    det.save(path)
    tensors, config, state, _ = load_checkpoint(path)
    config["method"] = "dfm"
    save_checkpoint(path, tensors, config, state)
    r = CliRunner().invoke(main, ["info", str(path)])
    assert r.exit_code == 2 and r.output.startswith("error: ") and "does not fit its own config" in r.output


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from costfilter.export import export_onnx

    tmp = tmp_path_factory.mktemp("onnx")
    det = Detector(small_config(coreset_ratio=0.1), progress=False).fit(make_mvtec(tmp / "m", n_train=4))
    export_onnx(det, tmp / "m.onnx")
    return tmp / "m.onnx"


def test_every_sampled_byte_flip_of_an_onnx_file_is_refused(onnx_file, tmp_path):
    from costfilter.export import OnnxDetector

    data = onnx_file.read_bytes()
    OnnxDetector(onnx_file)  # the file itself loads
    rng = np.random.default_rng(0)
    positions = sorted(set(rng.integers(0, len(data), 60).tolist()) | {0, len(data) // 2, len(data) - 1})
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 0xFF
        (tmp_path / "f.onnx").write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError):
            OnnxDetector(tmp_path / "f.onnx")


@pytest.mark.parametrize("edit", ["image_size 33", "method zeroshot", "threshold 1e9", "tile 64"])
def test_edited_onnx_metadata_is_refused(onnx_file, tmp_path, edit):
    import onnx

    from costfilter.export import OnnxDetector

    proto = onnx.load(str(onnx_file))
    props = {p.key: p for p in proto.metadata_props}
    cfg, thr = json.loads(props["config"].value), json.loads(props["thresholds"].value)
    if edit == "image_size 33":
        cfg["features"]["image_size"] = 33
    elif edit == "method zeroshot":
        cfg["method"] = "zeroshot"
    elif edit == "threshold 1e9":
        thr["image"] = 1e9
    else:
        cfg["tiling"]["size"] = 64
    props["config"].value, props["thresholds"].value = json.dumps(cfg), json.dumps(thr)
    onnx.save(proto, str(tmp_path / "e.onnx"))
    with pytest.raises(CheckpointError, match="content hash mismatch"):
        OnnxDetector(tmp_path / "e.onnx")


def test_onnx_signature_follows_the_key(onnx_file, tmp_path, fitted, monkeypatch):
    from costfilter.export import OnnxDetector, export_onnx

    monkeypatch.delenv("COSTFILTER_SIGN_KEY", raising=False)
    det, _ = fitted
    export_onnx(det, tmp_path / "s.onnx", sign_key="k1")
    assert OnnxDetector(tmp_path / "s.onnx", sign_key="k1").state.signature == "valid"
    with pytest.raises(CheckpointError, match="signature does not match"):
        OnnxDetector(tmp_path / "s.onnx", sign_key="k2")
    with pytest.raises(CheckpointError, match="not signed"):
        OnnxDetector(onnx_file, sign_key="k1")


def test_predict_force_replaces_an_earlier_run_and_an_interrupted_run_leaves_nothing(tmp_path, fitted, monkeypatch):
    det, root = fitted
    model = tmp_path / "m.ckpt"
    det.save(model)
    out = tmp_path / "out"
    first = root / "alpha" / "test" / "spot"
    r = CliRunner().invoke(main, ["predict", str(model), str(first), "--out", str(out), "-q"])
    assert r.exit_code == 0
    earlier = {p.name for p in out.iterdir()}
    single = tmp_path / "one"
    save(texture(np.random.default_rng(1)), single / "solo.png")
    r = CliRunner().invoke(main, ["predict", str(model), str(single), "--out", str(out), "-q", "--force"])
    assert r.exit_code == 0
    assert {p.name for p in out.iterdir()} == {"solo_overlay.png", "solo_mask.png", "results.csv", "results.jsonl",
                                               "run-record.json"}
    assert earlier - {p.name for p in out.iterdir()}  # the earlier run's overlays are gone

    import costfilter.result_files as rf

    def interrupted(*args, **kwargs):
        (args[1] / "half_overlay.png").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(rf, "write_predictions", interrupted)
    fresh = tmp_path / "fresh"
    r = CliRunner().invoke(main, ["predict", str(model), str(single), "--out", str(fresh), "-q"])
    assert r.exit_code == 130 and "nothing half-written" in r.output
    assert not list(fresh.iterdir())


def test_test_without_json_writes_nothing_and_fit_records_are_not_overwritten(tmp_path, fitted, monkeypatch):
    det, root = fitted
    model = tmp_path / "m.ckpt"
    det.save(model)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["test", str(model), str(root), "-q"])
    assert r.exit_code == 0 and not (tmp_path / "runs").exists()
    (tmp_path / "new.ckpt.fit-record.json").write_text("a user's notes")
    r = CliRunner().invoke(main, ["fit", str(root), "--out", str(tmp_path / "new.ckpt"), "-q"])
    assert r.exit_code == 2 and "new.ckpt.fit-record.json: already exists" in r.output
    assert (tmp_path / "new.ckpt.fit-record.json").read_text() == "a user's notes"
    assert not (tmp_path / "new.ckpt").exists()


# ----------------------------------------------------------------------------- the service
fastapi = pytest.importorskip("fastapi")


@pytest.fixture
def guarded(fitted, tmp_path):
    from fastapi.testclient import TestClient

    from costfilter.serve import HistoryStore, create_app

    det, root = fitted
    store = HistoryStore(tmp_path / "store")
    app = create_app(det, store, max_upload_mb=0.05, api_key="s3cret", allowed_hosts=["testserver"])
    with TestClient(app) as c:
        yield c, store, (root / "alpha" / "train" / "good" / "000.png").read_bytes()


def _post(c, data, headers=None, ctype="image/png"):
    return c.post("/predict", files={"file": ("p.png", data, ctype)}, headers=headers or {})


def test_api_key_is_required_everywhere_but_the_page_and_health(guarded):
    c, store, png = guarded
    key = {"Authorization": "Bearer s3cret"}
    assert c.get("/health").status_code == 200 and c.get("/").status_code == 200
    for url in ("/results", "/openapi.json", "/docs", "/results/abc/image"):
        assert c.get(url).status_code == 401
    assert _post(c, png).status_code == 401 and store.list()[0] == 0
    assert _post(c, png, {"Authorization": "Bearer wrong"}).status_code == 401
    ok = _post(c, png, key)
    assert ok.status_code == 200 and ok.headers["x-content-type-options"] == "nosniff"
    assert c.get("/results", headers=key).json()["total"] == 1


def test_foreign_hosts_and_origins_are_refused(guarded):
    c, store, png = guarded
    key = {"Authorization": "Bearer s3cret"}
    r = c.get("/health", headers={"Host": "evil.example"})
    assert r.status_code == 400 and "is not served here" in r.json()["detail"]
    r = _post(c, png, dict(key, Origin="https://evil.example"))
    assert r.status_code == 403 and store.list()[0] == 0
    assert _post(c, png, dict(key, Origin="http://testserver")).status_code == 200  # its own page


def test_chunked_uploads_are_cut_at_the_limit_and_bad_queries_are_4xx(guarded):
    c, store, _ = guarded
    key = {"Authorization": "Bearer s3cret"}

    def chunks():
        for _ in range(400):  # 400 × 1 kB, no Content-Length: over the 0.05 MB limit
            yield b"x" * 1000

    r = c.post("/predict", content=chunks(), headers=dict(key, **{"Content-Type": "multipart/form-data; boundary=b"}))
    assert r.status_code == 413 and store.list()[0] == 0
    assert c.get("/results", params={"offset": 10**20}, headers=key).status_code == 422
    assert _post(c, b"GIF89a" + b"\0" * 20, key, "application/octet-stream").status_code == 400


def test_a_stored_file_missing_from_disk_is_a_404(guarded):
    c, store, png = guarded
    key = {"Authorization": "Bearer s3cret"}
    rec = _post(c, png, key).json()
    shutil.rmtree(store.file_path(rec["id"], ""))
    r = c.get(f"/results/{rec['id']}/overlay", headers=key)
    assert r.status_code == 404 and "missing from the store" in r.json()["detail"]


@pytest.mark.parametrize("args,message", [
    (["--store", "FILE"], "cannot keep the history here"),
    (["--db", "notadb://x"], "cannot open the history database"),
    (["--port", "70000"], "70000 is not in the range"),
    (["--max-upload-mb", "-1"], "-1.0 is not in the range"),
])
def test_serve_startup_errors_are_one_line(tmp_path, fitted, args, message):
    det, _ = fitted
    model = tmp_path / "m.ckpt"
    det.save(model)
    (tmp_path / "FILE").write_text("")
    args = [a.replace("FILE", str(tmp_path / "FILE")) for a in args]
    r = CliRunner().invoke(main, ["serve", str(model), "--store", str(tmp_path / "store"), *args])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
