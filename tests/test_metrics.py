"""Metrics against independent references: scikit-learn and brute-force loops."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from costfilter.metrics import aupro, auroc, average_precision, binary_curve, f1_max, image_metrics, pixel_metrics
from costfilter.metrics.pro import area_up_to


@pytest.mark.parametrize("seed", range(6))
def test_ranking_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + 0.8 * y, 1 if seed % 2 else 6)  # odd seeds: many ties
    c = binary_curve(s, y)
    assert auroc(c) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(c) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    p, r, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.nanmax(2 * p * r / (p + r))
    assert f1_max(c)[0] == pytest.approx(ref, abs=1e-12)


def test_f1max_threshold_reproduces_its_f1():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = rng.normal(size=300) + y
    f1, t = f1_max(binary_curve(s, y))
    pred = s >= t
    tp = (pred & (y == 1)).sum()
    assert f1 == pytest.approx(2 * tp / (pred.sum() + y.sum()))


def test_perfect_and_inverted_and_degenerate():
    y = np.array([0, 0, 1, 1])
    assert image_metrics([0.1, 0.2, 0.8, 0.9], y)["image_auroc"] == 1.0
    assert image_metrics([0.9, 0.8, 0.2, 0.1], y)["image_auroc"] == 0.0
    assert np.isnan(auroc(binary_curve(np.array([1.0, 2.0]), np.array([1, 1]))))


def brute_force_aupro(maps, masks, limit):
    """Threshold by threshold, region by region: the definition, with no vectorisation."""
    regions = []
    for i in range(len(masks)):
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        pros.append(np.mean([pred[i][r].mean() for i, r in regions]))
        fprs.append((pred & normal).sum() / normal.sum())
    return area_up_to(np.array(fprs), np.array(pros), limit)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_aupro_equals_brute_force(seed, limit):
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 12, 12), bool)
    masks[0, 2:5, 2:6] = True
    masks[0, 8:10, 8:11] = True  # two regions in one image
    masks[1, 5:9, 1:3] = True
    maps = rng.random((3, 12, 12)) + 0.6 * masks
    maps = np.round(maps, 2)  # ties between pixels
    assert aupro(maps, masks, limit) == pytest.approx(brute_force_aupro(maps, masks, limit), abs=1e-12)


def test_aupro_perfect_is_one_and_random_is_low():
    masks = np.zeros((2, 16, 16), bool)
    masks[0, 4:8, 4:8] = True
    perfect = masks.astype(float)
    assert aupro(perfect, masks) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    # Random scores: PRO ≈ FPR, so the normalised area up to 0.3 is ≈ 0.15.
    assert aupro(rng.random(masks.shape), masks) == pytest.approx(0.15, abs=0.08)


def test_pixel_metrics_match_sklearn_on_flattened_pixels():
    rng = np.random.default_rng(3)
    masks = rng.random((4, 10, 10)) > 0.8
    maps = rng.random((4, 10, 10)) + masks
    out = pixel_metrics(maps, masks)
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert out["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert 0.0 <= out["aupro"] <= 1.0


def _streamed(maps, masks, batches, limit=0.3, announce=True):
    from costfilter.metrics.streaming import PixelMetrics

    acc = PixelMetrics(limit, n_pixels=maps.size if announce else None)
    for part in np.array_split(np.arange(len(maps)), batches):
        acc.add(maps[part], masks[part])
    return acc.result()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("chunk", [7, 64, 1 << 22])  # groups of tied scores cut across chunk borders
@pytest.mark.parametrize("limit", [0.05, 0.3])
def test_streamed_pixel_metrics_equal_the_whole_array_ones_and_sklearn(monkeypatch, seed, chunk, limit):
    from costfilter.metrics import streaming

    monkeypatch.setattr(streaming, "CHUNK", chunk)
    rng = np.random.default_rng(seed)
    masks = np.zeros((6, 16, 16), bool)
    masks[0, 2:5, 2:6] = masks[0, 9:12, 9:13] = True  # two regions in one image
    masks[2, 5:10, 1:4] = masks[4, 0:3, 12:16] = True
    maps = np.round(rng.random(masks.shape) + 0.5 * masks, 2).astype(np.float32)  # many ties
    maps[1, 0, :4] = -0.0  # the same threshold as 0.0
    maps[1, 1, :4] = 0.0
    maps[3] -= 2.0  # negative scores sort below positive ones
    whole = pixel_metrics(maps, masks, limit)
    for batches, announce in ((1, True), (4, True), (6, False)):
        streamed = _streamed(maps, masks, batches, limit, announce)
        assert streamed.keys() == whole.keys()
        for k in whole:
            assert streamed[k] == pytest.approx(whole[k], abs=1e-9), k
    assert streamed["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)
    assert streamed["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-9)
    assert streamed["aupro"] == pytest.approx(brute_force_aupro(maps, masks, limit), abs=1e-9)
    p, r, _ = precision_recall_curve(masks.ravel(), maps.ravel())
    f1 = np.max(np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0))
    assert streamed["pixel_f1max"] == pytest.approx(f1, abs=1e-9)


def test_streamed_pixel_metrics_undefined_cases_and_bad_input():
    masks = np.zeros((2, 8, 8), bool)
    maps = np.random.default_rng(0).random(masks.shape)
    out = _streamed(maps, masks, 2)
    assert all(np.isnan(v) for v in out.values())  # no defect pixel: nothing is defined
    full = np.ones_like(masks)
    out = _streamed(maps, full, 1)
    assert np.isnan(out["pixel_auroc"]) and np.isnan(out["aupro"]) and out["pixel_ap"] == 1.0
    from costfilter.metrics.streaming import PixelMetrics

    with pytest.raises(ValueError, match="finite"):
        PixelMetrics().add(np.full((1, 2, 2), np.nan), np.zeros((1, 2, 2), bool))
    with pytest.raises(ValueError, match="announced"):
        acc = PixelMetrics(n_pixels=4)
        acc.add(maps[:1], masks[:1])


def test_evaluate_streams_the_same_pixel_metrics_as_the_whole_maps(tmp_path):
    from conftest import make_mvtec, small_config

    from costfilter.api import Detector

    root = make_mvtec(tmp_path / "m", categories=("alpha", "beta"), n_train=4, n_good=3, n_bad=4)
    det = Detector(small_config(), progress=False).fit(root)
    ev = det.evaluate(root, keep_maps=True)
    for cat in ("alpha", "beta"):
        assert ev.maps[cat].shape == ev.masks[cat].shape == (7, 64, 64)
        whole = pixel_metrics(ev.maps[cat], ev.masks[cat])
        for k, v in whole.items():
            assert ev.per_category[cat][k] == pytest.approx(v, abs=1e-9), (cat, k)
