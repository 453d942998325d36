"""ONNX export: the exported graph (raw images in, map and score out) agrees with the eager
detector on fixture images for every exportable method; predict runs it; bad input is refused.

Stated tolerance: image scores within 1e-3 relative, maps within 1e-2 of the map's peak, the same
decisions. Both runtimes resize with the same function; measured here ~4e-6 / 2e-5. On real
images a pixel now and then sits on a rounding boundary that onnxruntime's resampling arithmetic
puts on the other side (one grey level); the largest effect measured on the real sets is in
benchmarks/results/export.json."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from click.testing import CliRunner
from conftest import make_mvtec, save, small_config, texture

from costfilter import CostfilterError, Detector
from costfilter.cli import main
from costfilter.config import DetectorConfig
from costfilter.data import load_dataset, split_of
from costfilter.errors import CheckpointError
from costfilter.export import OnnxDetector, compare_predictions, export_onnx
from costfilter.toy_images import planted_defect

SCORE_TOL, MAP_TOL = 1e-3, 1e-2


def _config(method: str):
    cfg = small_config()
    cfg.method = method
    tr = cfg.costfilter.training
    tr.steps, tr.val_every, tr.n_val = 4, 4, 4
    cfg.costfilter.widths, cfg.costfilter.top_k, cfg.costfilter.max_templates = (4, 8), 4, 6
    cfg.costfilter.recon_steps = 4
    tr = cfg.dfm.training
    tr.steps, tr.val_every, tr.n_val = 4, 4, 4
    return cfg


def _check_images(root, tmp_path):
    """The fixture's test images (48 px: enlarged to 64) plus larger ones (shrunk), two sizes."""
    paths = [s.path for s in split_of(load_dataset(root), "test")]
    rng = np.random.default_rng(5)
    for i, (h, w) in enumerate([(100, 70), (100, 70), (131, 90)]):
        img = texture(rng, max(h, w))[:h, :w].copy()
        if i == 1:
            img[20:40, 10:30] = (250, 30, 30)
        paths.append(save(img, tmp_path / "check" / f"big{i}.png"))
    return paths


# The plain memory, DFM and CostFilter-AD (memory base) exports are checked with the same
# tolerances by the registry contract (test_registries.py); these are the variants it does not fit.
@pytest.mark.parametrize("method,variant", [("dfm", "train_backbone"), ("costfilter", "reconstruction")])
def test_exported_graph_matches_eager(tmp_path, method, variant):
    root = make_mvtec(tmp_path / "mv", categories=("alpha",))
    cfg = _config(method)
    if variant == "train_backbone":  # the trained backbone weights go into the graph
        cfg.dfm.train_backbone = True
    elif variant:
        cfg.costfilter.base = variant
    det = Detector(cfg, progress=False).fit(root)
    if variant == "train_backbone":  # weights away from the package's, whichever step validation kept
        with torch.no_grad():
            det.model.backbone_params[0].mul_(1.05)
    meta = export_onnx(det, tmp_path / "m.onnx")
    assert meta["costfilter_format"] == "costfilter-onnx"
    onnx_det = OnnxDetector(tmp_path / "m.onnx")
    assert onnx_det.thresholds == det.thresholds and onnx_det.config.to_dict() == det.config.to_dict()
    paths = _check_images(root, tmp_path)
    eager, exported = det.predict(paths), onnx_det.predict(paths)
    diff = compare_predictions(eager, exported)
    assert diff["max_score_rel_diff"] < SCORE_TOL, diff
    assert diff["max_map_rel_diff"] < MAP_TOL, diff
    assert diff["decision_agreement"] == 1.0
    assert [p.size for p in eager] == [p.size for p in exported]
    # Batches of several images of one size go through the dynamic batch axis in one run.
    arrays = [texture(np.random.default_rng(i), 80) for i in range(3)]
    together = onnx_det.predict(arrays)
    alone = [onnx_det.predict(a)[0] for a in arrays]
    assert np.allclose([p.score for p in together], [p.score for p in alone], rtol=1e-5)


def test_zero_shot_and_unfitted_detectors_are_refused(tmp_path, fitted):
    with pytest.raises(CostfilterError, match="cannot be exported"):
        export_onnx(Detector(DetectorConfig(method="zeroshot"), progress=False), tmp_path / "z.onnx")
    det, _ = fitted
    (tmp_path / "exists.onnx").write_bytes(b"keep me")
    with pytest.raises(CostfilterError, match="already exists"):
        export_onnx(det, tmp_path / "exists.onnx")
    assert (tmp_path / "exists.onnx").read_bytes() == b"keep me"


def test_foreign_or_corrupt_onnx_files_get_one_line_errors(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(CheckpointError, match="bad.onnx: not a loadable ONNX model"):
        OnnxDetector(bad)
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "foreign.onnx")
    with pytest.raises(CheckpointError, match="not a costfilter ONNX export"):
        OnnxDetector(tmp_path / "foreign.onnx")


def test_cli_export_then_predict_with_onnxruntime(tmp_path, fitted):
    det, root = fitted
    ckpt, onnx_path = tmp_path / "m.ckpt", tmp_path / "m.onnx"
    digest = det.save(ckpt)
    test_dir = root / "alpha" / "test" / "spot"
    r = CliRunner().invoke(main, ["export", str(ckpt), "--out", str(onnx_path), "--check", str(test_dir)])
    assert r.exit_code == 0, r.output
    assert "parity on 3 images" in r.output and "decisions agree on 100%" in r.output
    r = CliRunner().invoke(main, ["export", str(ckpt), "--out", str(onnx_path)])
    assert r.exit_code == 2 and "already exists" in r.output
    r = CliRunner().invoke(main, ["info", str(onnx_path)])
    assert r.exit_code == 0, r.output
    assert f"from checkpoint sha256 {digest}" in r.output
    assert "method       memory" in r.output and f"image {det.thresholds.image:.4f}" in r.output
    rng = np.random.default_rng(3)
    img, _ = planted_defect(rng, 48)
    part = save(img, tmp_path / "parts" / "part.png")
    save(texture(rng), tmp_path / "parts" / "good.png")
    r = CliRunner().invoke(main, ["predict", str(onnx_path), str(part.parent), "--out", str(tmp_path / "out"), "-q"])
    assert r.exit_code == 0, r.output
    lines = (tmp_path / "out" / "results.csv").read_text().splitlines()
    rows = {row.split(",")[0].rsplit("/", 1)[-1]: row for row in lines[1:]}
    assert ",reject," in rows["part.png"] and ",pass," in rows["good.png"]
    assert (tmp_path / "out" / "part_overlay.png").is_file()
    eager = {p.path.rsplit("/", 1)[-1]: p.score for p in det.predict([part, part.parent / "good.png"])}
    for name, row in rows.items():
        assert float(row.split(",")[1]) == pytest.approx(eager[name], rel=SCORE_TOL)


def test_openvino_runs_the_export_as_onnxruntime_does(tmp_path, fitted):
    pytest.importorskip("openvino")
    det, root = fitted
    ckpt, onnx_path = tmp_path / "m.ckpt", tmp_path / "m.onnx"
    det.save(ckpt)
    export_onnx(det, onnx_path)
    paths = _check_images(root, tmp_path)  # two sizes besides the fixture's: dynamic shapes
    eager = det.predict(paths)
    vino = OnnxDetector(onnx_path, runtime="openvino")
    assert vino.runtime == "openvino" and vino.thresholds == det.thresholds
    diff = compare_predictions(eager, vino.predict(paths))
    assert diff["max_score_rel_diff"] < SCORE_TOL and diff["max_map_rel_diff"] < MAP_TOL, diff
    assert diff["decision_agreement"] == 1.0
    out = {}
    for runtime in ("onnxruntime", "openvino"):
        r = CliRunner().invoke(main, ["predict", str(onnx_path), str(root / "alpha" / "test"), "--runtime", runtime,
                                      "--out", str(tmp_path / runtime), "-q"])
        assert r.exit_code == 0, r.output
        rows = (tmp_path / runtime / "results.csv").read_text().splitlines()[1:]
        out[runtime] = {row.split(",")[0]: row.split(",")[2] for row in rows}  # path → decision
    assert out["openvino"] == out["onnxruntime"] and len(out["openvino"]) == 6
    # A checkpoint is not an exported graph; a modified export is refused before any runtime sees it.
    r = CliRunner().invoke(main, ["predict", str(ckpt), str(root / "alpha" / "test"), "--runtime", "openvino",
                                  "--out", str(tmp_path / "ckpt-out")])
    assert r.exit_code == 2 and "runs an exported .onnx model" in r.output and "Traceback" not in r.output
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "bad.onnx").write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        OnnxDetector(tmp_path / "bad.onnx", runtime="openvino")
    with pytest.raises(CostfilterError, match="unknown runtime"):
        OnnxDetector(onnx_path, runtime="tensorrt")


def test_int8_export_quantises_the_backbone_only_and_is_kept_only_with_equal_decisions(tmp_path, fitted, monkeypatch):
    import onnx

    from costfilter.export import quantize

    det, root = fitted
    good = root / "alpha" / "train" / "good"
    broken = tmp_path / "x.png"
    broken.write_bytes(b"not a png")  # an unreadable calibration image is skipped, not fatal
    calibration = sorted(good.iterdir()) + [broken]
    meta = export_onnx(det, tmp_path / "q.onnx", int8=calibration)
    assert meta["precision"] == "int8"
    facts = __import__("json").loads(meta["int8"])
    assert facts["calibration_images"] == len(calibration) - 1 and facts["calibration"] == "percentile"
    assert facts["scope"] == "dense" and facts["quantized_convs"] > 0
    export_onnx(det, tmp_path / "f.onnx")
    export_onnx(det, tmp_path / "all.onnx", int8=calibration, int8_scope="all")
    fp32 = onnx.load(tmp_path / "f.onnx")
    convs = {n.name: n for n in fp32.graph.node if n.op_type == "Conv"}
    backbone, dense = set(quantize.backbone_convs(fp32)), set(quantize.backbone_convs(fp32, "dense"))
    assert 0 < len(dense) < len(backbone) < len(convs)  # the map smoothing is never quantised
    assert all(next((a.i for a in convs[n].attribute if a.name == "group"), 1) > 1 for n in backbone - dense)
    for path, expected in ((tmp_path / "q.onnx", dense), (tmp_path / "all.onnx", backbone)):
        # Every quantised weight feeds one of the expected convs; the others and the bank's Gemm read float weights.
        int8 = onnx.load(path)
        consumers = {i: n.name for n in int8.graph.node for i in n.input}
        dq = [n for n in int8.graph.node if n.op_type == "DequantizeLinear"]
        weights = {init.name for init in int8.graph.initializer if init.data_type == onnx.TensorProto.INT8}
        assert weights and {consumers[n.output[0]] for n in dq if n.input[0] in weights} == expected
    model = OnnxDetector(tmp_path / "q.onnx")
    assert model.precision == "int8" and OnnxDetector(tmp_path / "f.onnx").precision == "fp32"
    paths = [s.path for s in split_of(load_dataset(root), "test")]
    scores = np.array([p.score for p in model.predict(paths)])
    reference = np.array([p.score for p in det.predict(paths)])
    assert np.isfinite(scores).all() and not np.allclose(scores, reference, rtol=1e-6)  # it really changed arithmetic
    # The CLI keeps an INT8 file only when every decision on the check images is the float model's.
    ckpt = tmp_path / "m.ckpt"
    det.save(ckpt)
    args = ["export", str(ckpt), "--int8", str(good), "--check", str(root / "alpha" / "test")]
    real = compare_predictions
    monkeypatch.setattr("costfilter.export.compare_predictions",
                        lambda a, b: {**real(a, b), "decision_agreement": 5 / 6})
    r = CliRunner().invoke(main, args + ["--out", str(tmp_path / "refused.onnx")])
    assert r.exit_code == 2 and "INT8 changes 1 of 6 decisions" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "refused.onnx").exists() and not list(tmp_path.glob(".refused.onnx.*"))
    monkeypatch.setattr("costfilter.export.compare_predictions", lambda a, b: {**real(a, b), "decision_agreement": 1.0})
    r = CliRunner().invoke(main, args + ["--out", str(tmp_path / "kept.onnx")])
    assert r.exit_code == 0 and "8 calibration images)" in r.output, r.output
    assert OnnxDetector(tmp_path / "kept.onnx").precision == "int8"
    r = CliRunner().invoke(main, ["export", str(ckpt), "--int8", str(good), "--out", str(tmp_path / "unchecked.onnx")])
    assert r.exit_code == 0 and "nobody compared" in r.output, r.output
    r = CliRunner().invoke(main, ["info", str(tmp_path / "kept.onnx")])
    assert r.exit_code == 0 and "backbone quantised to INT8" in r.output, r.output
    (tmp_path / "no-images").mkdir()
    r = CliRunner().invoke(main, ["export", str(ckpt), "--int8", str(tmp_path / "no-images"),
                                  "--out", str(tmp_path / "n.onnx")])
    assert r.exit_code == 2 and "no-images: no images found" in r.output and "Traceback" not in r.output


def test_int8_benchmark_measures_every_variant_against_float32(tmp_path):
    from benchmarks.int8 import int8_table, run_category
    from costfilter.evaluation import evaluate

    root = make_mvtec(tmp_path / "mvtec", categories=("alpha",), n_train=10)
    row = run_category(root / "alpha", tmp_path, small_config())
    variants = ("dense-minmax", "dense-percentile", "all-minmax", "all-percentile")
    assert set(row["variants"]) == {"fp32", *variants} and row["chosen"] in variants
    # The float32 export's metrics are the eager model's (same fit, same seed).
    samples = load_dataset(root / "alpha")
    eager = evaluate(Detector(small_config(), progress=False).fit(samples), split_of(samples, "test"), 64).mean
    for k, v in row["variants"]["fp32"]["metrics"].items():
        assert v == pytest.approx(eager[k], abs=1e-6), k
    for name in variants:
        v = row["variants"][name]
        assert v["kept"] == (v["same_decisions"] == row["n_test"] and abs(v["delta"]["image_auroc"]) <= 0.005
                             and abs(v["delta"]["aupro"]) <= 0.005)
        assert v["fidelity_good"] > 0 and v["batch1"]["images_per_s"] > 0
    assert row["chosen"] == min(variants, key=lambda m: row["variants"][m]["fidelity_good"])
    table = int8_table({"rows": [row]})
    assert "INT8 " + row["chosen"] + " (chosen)" in table and "float32" in table
