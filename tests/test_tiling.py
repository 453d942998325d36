"""Tiling: geometry, seam-free stitching, and an end-to-end fit → predict on large images."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from conftest import save, small_config, texture

from costfilter import CostfilterError, Detector
from costfilter.tiling import cut_tiles, stitch, tile_boxes, tile_starts


@pytest.mark.parametrize("length,tile,overlap", [(100, 32, 8), (257, 64, 16), (64, 64, 0), (30, 64, 8), (1000, 256, 100)])
def test_tiles_cover_the_axis_with_at_least_the_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + min(tile, length) == length
    shared = [starts[i] + tile - starts[i + 1] for i in range(len(starts) - 1)]
    assert all(s >= overlap for s in shared)
    # the fewest tiles: one fewer could not keep that overlap
    n = len(starts)
    assert n == 1 or (n - 1) * (tile - overlap) + overlap < length


def test_bad_tiling_is_refused():
    with pytest.raises(CostfilterError):
        tile_starts(100, 32, 32)
    cfg = small_config()
    cfg.tiling.size, cfg.tiling.overlap = 32, 40
    with pytest.raises(CostfilterError, match="tiling"):
        cfg.validate()


def test_stitching_reproduces_a_global_map_exactly():
    g = torch.Generator().manual_seed(0)
    full = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 170, 230, generator=g), 9, 1, 4)[0, 0]
    boxes = tile_boxes((170, 230), 64, 20)
    tiles = torch.stack([full[y : y + h, x : x + w] for y, x, h, w in boxes])
    assert torch.allclose(stitch(tiles, boxes, (170, 230), 20), full, atol=1e-6)


def test_disagreeing_tiles_blend_without_seams():
    boxes = tile_boxes((150, 150), 64, 16)
    values = torch.arange(len(boxes), dtype=torch.float32) * 10  # every tile says something else
    out = stitch(values[:, None, None].expand(-1, 64, 64), boxes, (150, 150), 16)
    per_row = len(tile_starts(150, 64, 16))
    # Neighbours differ by 10 across and 10 · per_row down. A hard seam would jump by that much;
    # the ramp spreads each difference over the overlap: steps of at most difference / (overlap + 1).
    assert out.diff(dim=1).abs().max() <= 10 / 17 + 1e-4
    assert out.diff(dim=0).abs().max() <= 10 * per_row / 17 + 1e-4
    assert out.min() >= values.min() - 1e-4 and out.max() <= values.max() + 1e-4


def _large(rng, h, w, defect_at=None):
    img = texture(rng, max(h, w))[:h, :w].copy()
    if defect_at is not None:
        y, x = defect_at
        img[y : y + 14, x : x + 14] = (250, 30, 30)
    return img


def test_tiled_fit_and_predict_localise_a_defect_in_a_large_image(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "big" / "good"
    for i in range(6):
        save(_large(rng, 160, 224), root / f"{i:03d}.png")
    cfg = small_config()
    cfg.tiling.size, cfg.tiling.overlap = 80, 24
    det = Detector(cfg, progress=False).fit(tmp_path / "big", fmt="folder")
    ckpt = tmp_path / "m.ckpt"
    det.save(ckpt)
    det = Detector.load(ckpt, progress=False)
    assert det.config.tiling.size == 80
    bad = save(_large(rng, 160, 224, defect_at=(100, 150)), tmp_path / "bad.png")
    good = save(_large(rng, 160, 224), tmp_path / "good.png")
    p_bad, p_good = det.predict([bad, good])
    assert p_bad.anomaly_map.shape == (160, 224)  # stitched at the source size
    y, x = np.unravel_index(p_bad.anomaly_map.argmax(), p_bad.anomaly_map.shape)
    assert 90 <= y <= 124 and 140 <= x <= 174
    assert p_bad.score > p_good.score and p_bad.decision == "reject" and p_good.decision == "pass"
    box = p_bad.regions(det.thresholds.pixel)[0].box
    assert box[0] <= 164 and box[2] >= 150 and box[1] <= 114 and box[3] >= 100
    # Arrays go through the same tiled path as files.
    assert det.predict(np.asarray(_large(rng, 160, 224, (100, 150))))[0].anomaly_map.shape == (160, 224)


def test_tiled_onnx_export_matches_eager(tmp_path):
    pytest.importorskip("onnxruntime")
    from costfilter.export import OnnxDetector, compare_predictions, export_onnx

    rng = np.random.default_rng(1)
    for i in range(5):
        save(_large(rng, 128, 192), tmp_path / "d" / f"{i}.png")
    cfg = small_config()
    cfg.tiling.size, cfg.tiling.overlap = 64, 16  # tiles at the model's size: no resize on either side
    det = Detector(cfg, progress=False).fit(tmp_path / "d", fmt="folder")
    export_onnx(det, tmp_path / "t.onnx")
    images = [_large(rng, 128, 192, (40, 90)), _large(rng, 128, 192)]
    eager = det.predict(images)
    runtimes = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    for runtime in runtimes:
        diff = compare_predictions(eager, OnnxDetector(tmp_path / "t.onnx", runtime=runtime).predict(images))
        assert diff["max_score_rel_diff"] < 1e-4 and diff["max_map_rel_diff"] < 1e-3, (runtime, diff)
        assert diff["decision_agreement"] == 1


def test_cut_tiles_are_views_of_the_image():
    img = np.zeros((50, 70, 3), np.uint8)
    tiles = cut_tiles(img, tile_boxes((50, 70), 32, 8))
    assert all(t.shape == (32, 32, 3) for t in tiles)
    assert all(np.shares_memory(t, img) for t in tiles)
