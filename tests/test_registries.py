"""The torch-free names agree with their registries, a new method is one module plus one
registry line, and every registered method keeps the contract its ``Method`` declares."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import make_mvtec, save, small_config, texture

from costfilter import names
from costfilter.api import Detector
from costfilter.backbones import BACKBONES
from costfilter.data import FORMATS, load_dataset, split_of
from costfilter.errors import CostfilterError
from costfilter.methods import REGISTRY, get_method
from costfilter.toy_images import planted_defect


def test_names_match_the_registries():
    assert names.FORMATS == tuple(FORMATS)
    assert names.BACKBONES == tuple(BACKBONES)
    assert names.METHODS == tuple(REGISTRY)
    from costfilter.export.runtime import RUNTIMES

    assert names.RUNTIMES == tuple(RUNTIMES)
    for name in REGISTRY:
        method = get_method(name)
        assert method.name == name
    assert [m for m in names.METHODS if get_method(m).needs_fit] == ["memory", "costfilter", "dfm"]
    assert [m for m in names.METHODS if not get_method(m).exportable] == ["zeroshot"]


def test_cli_help_loads_no_torch():
    code = "import sys; from costfilter.cli import main; assert 'torch' not in sys.modules, 'torch was imported'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


def test_a_new_method_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    monkeypatch.setitem(REGISTRY, "centroid", "centroid_method:METHOD")  # the one registry line
    root = make_mvtec(tmp_path / "m", n_train=6)
    cfg = small_config()
    cfg.method = "centroid"
    det = Detector(cfg, progress=False).fit(root)
    assert det.thresholds.source == "fit"  # it scores no image leave-one-out, so it says so
    ev = det.evaluate(root)
    assert ev.per_category["alpha"]["image_auroc"] > 0.9  # a red square is far from the mean stripe patch
    det.save(tmp_path / "c.ckpt")
    again = Detector.load(tmp_path / "c.ckpt", progress=False)
    image = next((root / "alpha" / "test" / "spot").glob("*.png"))
    assert np.isclose(again.predict(image)[0].score, det.predict(image)[0].score)


def test_unknown_method_is_a_one_line_error():
    cfg = small_config()
    cfg.method = "nope"
    with pytest.raises(CostfilterError, match="unknown method 'nope'; choose one of memory"):
        Detector(cfg)


def _tiny(name: str):
    cfg = small_config()
    cfg.method = name
    cf = cfg.costfilter
    cf.widths, cf.top_k, cf.max_templates, cf.recon_steps = (4, 8), 4, 6, 4
    for tr in (cf.training, cfg.dfm.training):
        tr.steps, tr.val_every, tr.n_val = 3, 3, 4
    return cfg


def _large(rng: np.random.Generator, h: int, w: int, defect: bool = False) -> np.ndarray:
    image = texture(rng, max(h, w))[:h, :w].copy()
    if defect:
        image[50:70, 60:80] = planted_defect(rng, 20)[0]
    return image


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_registered_method_keeps_its_contract(tmp_path, name):
    """Fit → save → load gives the same scores; ``exportable`` ⇔ the export runs and agrees with
    the eager model (the tolerances of test_export.py); ``extend`` ⇔ a category can be added;
    tiling works wherever the method can fit; no fit ⇔ fit is refused and predict runs as is."""
    method = get_method(name)
    root = make_mvtec(tmp_path / "m", n_train=6)
    paths = [s.path for s in split_of(load_dataset(root), "test")]
    det = Detector(_tiny(name), progress=False)
    if not method.needs_fit:
        with pytest.raises(CostfilterError, match="needs no fit"):
            det.fit(root)
        first, second = det.predict(paths), det.predict(paths)
        assert [p.score for p in first] == [p.score for p in second]
        assert {p.decision for p in first} <= {"pass", "reject"}
    else:
        det.fit(root)
        first = det.predict(paths)
        det.save(tmp_path / "m.ckpt")
        again = Detector.load(tmp_path / "m.ckpt", progress=False).predict(paths)
        assert [p.score for p in again] == [p.score for p in first]
        assert all(np.array_equal(a.anomaly_map, b.anomaly_map) for a, b in zip(first, again))
        assert [p.decision for p in again] == [p.decision for p in first]

    pytest.importorskip("onnxruntime")
    from costfilter.export import OnnxDetector, compare_predictions, export_onnx

    if method.exportable:
        export_onnx(det, tmp_path / "m.onnx")
        diff = compare_predictions(first, OnnxDetector(tmp_path / "m.onnx").predict(paths))
        assert diff["max_score_rel_diff"] < 1e-3 and diff["max_map_rel_diff"] < 1e-2, diff
        assert diff["decision_agreement"] == 1.0
    else:
        with pytest.raises(CostfilterError, match="cannot be exported"):
            export_onnx(det, tmp_path / "m.onnx")

    more = make_mvtec(tmp_path / "n", categories=("beta",), n_train=4, seed=3)
    if method.extend is not None:
        det.extend(more)
        assert det.learned == ["alpha", "beta"] and det.state.n_train_images == 6 + 4
        assert {p.category for p in det.predict(paths)} <= {"alpha", "beta"}
    else:
        with pytest.raises(CostfilterError, match="cannot add a category|fitted"):
            det.extend(more)

    tiled = _tiny(name)
    tiled.tiling.size, tiled.tiling.overlap = 64, 16
    if not method.needs_fit:
        with pytest.raises(CostfilterError, match="tiling is not available"):
            tiled.validate()
        return
    rng = np.random.default_rng(2)
    for i in range(5):
        save(_large(rng, 128, 160), tmp_path / "d" / f"{i}.png")
    det = Detector(tiled, progress=False).fit(tmp_path / "d", fmt="folder")
    # 128 × 160 at tile 64, overlap 16 (stride 48): 3 × 3 tiles per image, each a fit row of
    # 8 × 8 patches; the memory bank fits all 5 images, trained methods hold one out
    fitted = 5 if method.default_holdout == 0 else 4
    assert det.state.n_bank_images == fitted
    assert det.state.bank_size == int(fitted * 9 * 64 * tiled.memory.coreset_ratio)
    pred = det.predict(_large(rng, 128, 160, defect=True))[0]
    assert pred.anomaly_map.shape == (128, 160) and np.isfinite(pred.score)
