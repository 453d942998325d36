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
@pytest.mark.parametrize("parts", [1, 3])  # sorted in one piece, or in parts never merged
def test_streamed_pixel_metrics_equal_the_whole_array_ones_and_sklearn(monkeypatch, seed, chunk, limit, parts):
    from costfilter.metrics import streaming

    monkeypatch.setattr(streaming, "CHUNK", chunk)
    monkeypatch.setattr(streaming, "PARTS", parts)
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


def _pimo_brute_force(maps, masks, bounds):
    """AUPIMO by its definition, counted at every distinct score: each threshold's shared FPR
    (mean over normal images of their fraction of pixels ≥ t) and each anomalous image's TPR,
    the polyline through them in (ln FPR, TPR), clipped to the bounds, trapezoids."""
    normal = ~masks.reshape(len(masks), -1).any(1)
    lo, hi = bounds
    out = {}
    for i in np.flatnonzero(~normal):
        pos = maps[i][masks[i]]
        ts = np.unique(np.concatenate([maps[normal].ravel(), pos]))[::-1]
        fpr = np.array([np.mean([(maps[j] >= t).mean() for j in np.flatnonzero(normal)]) for t in ts])
        tpr = np.array([(pos >= t).mean() for t in ts])
        keep = fpr > 0
        if fpr[keep].min() > lo:  # no threshold reaches the range's start: undefined
            out[int(i)] = float("nan")
            continue
        lx, y = np.log(fpr[keep]), tpr[keep]
        grid = np.concatenate([[np.log(lo)], lx[(lx > np.log(lo)) & (lx < np.log(hi))], [np.log(hi)]])
        # a vertical run at one FPR: interpolation takes its lowest TPR on the way in, its
        # highest on the way out, so read the curve at each vertex from both sides
        ys = [np.interp(g, lx, y) if g in (np.log(lo), np.log(hi)) else None for g in grid]
        area = 0.0
        for k in range(len(grid) - 1):
            a, b = grid[k], grid[k + 1]
            ya = ys[k] if ys[k] is not None else y[lx == a].max()
            yb = ys[k + 1] if ys[k + 1] is not None else y[lx == b].min()
            area += 0.5 * (ya + yb) * (b - a)
        out[int(i)] = area / np.log(hi / lo)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupimo_equals_brute_force(seed):
    from costfilter.metrics.pimo import aupimo

    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(10, 24, 24))
    masks = np.zeros(maps.shape, dtype=bool)
    for i in range(5):  # five anomalous images with a blob each, scored somewhat higher
        y, x = rng.integers(2, 18, 2)
        masks[i, y : y + 5, x : x + 4] = True
        maps[i][masks[i]] += rng.uniform(1.0, 3.0)
    bounds = (2e-3, 2e-2)  # 2,880 normal pixels: the default range needs 100,000
    got = aupimo(maps, masks, bounds)
    ref = _pimo_brute_force(maps, masks, bounds)
    for i, v in ref.items():
        assert got.per_image[i] == pytest.approx(v, abs=1e-9)
    assert np.isnan(got.per_image[5:]).all()
    assert got.mean == pytest.approx(np.mean(list(ref.values())), abs=1e-9)
    assert 0 < got.mean < 1 and got.n_vertices > 30


def test_aupimo_limits_ties_and_undefined_cases():
    from costfilter.metrics.pimo import aupimo

    rng = np.random.default_rng(0)
    maps = rng.uniform(size=(6, 20, 20))
    masks = np.zeros(maps.shape, dtype=bool)
    masks[0, 5:9, 5:9] = True
    perfect = maps.copy()
    perfect[0][masks[0]] = 2.0  # every defect pixel above every normal one
    assert aupimo(perfect, masks, (1e-3, 1e-2)).mean == pytest.approx(1.0)
    buried = maps.copy()
    buried[0][masks[0]] = -1.0  # below every normal one
    assert aupimo(buried, masks, (1e-3, 1e-2)).mean == pytest.approx(0.0)
    # Quantised maps tie normal and defect pixels: still the brute-force value.
    q = np.round(maps * 20) / 20
    q[0][masks[0]] = np.round(q[0][masks[0]] + 0.3, 2)
    assert aupimo(q, masks, (5e-2, 2e-1)).mean == pytest.approx(_pimo_brute_force(q, masks, (5e-2, 2e-1))[0], abs=1e-9)
    # ...and where the top tie alone fires on more than the range's start: undefined in both (L17)
    assert np.isnan(aupimo(q, masks, (1e-2, 1e-1)).mean) and np.isnan(_pimo_brute_force(q, masks, (1e-2, 1e-1))[0])
    # Too few normal pixels for the default range, or no anomalous image: undefined, not a guess.
    assert np.isnan(aupimo(maps, masks).mean)
    assert np.isnan(aupimo(maps, np.zeros_like(masks), (1e-3, 1e-2)).mean)
    with pytest.raises(ValueError, match="fpr_bounds"):
        aupimo(maps, masks, (1e-2, 1e-3))


def test_aupimo_streamed_in_batches_equals_all_at_once(monkeypatch):
    from costfilter.metrics import pimo

    monkeypatch.setattr(pimo, "SLACK", 0)  # cut the normal scores back after every few images
    rng = np.random.default_rng(3)
    maps = np.round(rng.normal(size=(40, 32, 32)), 2)  # rounded: ties at the cut too
    masks = np.zeros(maps.shape, dtype=bool)
    for i in range(0, 40, 3):
        masks[i, 4:12, 6:14] = True
        maps[i][masks[i]] += 1.5
    bounds = (1e-3, 5e-3)
    whole = pimo.aupimo(maps, masks, bounds)
    normal = int((~masks.reshape(40, -1).any(1)).sum()) * 32 * 32
    acc = pimo.AupimoAccumulator(bounds, normal_pixels=normal)
    for i in range(0, 40, 7):
        acc.add(maps[i : i + 7], masks[i : i + 7])
    streamed = acc.result()
    np.testing.assert_array_equal(streamed.per_image, whole.per_image)
    assert streamed.mean == whole.mean and 0 < whole.mean < 1
    assert whole.mean == pytest.approx(np.mean(list(_pimo_brute_force(maps, masks, bounds).values())), abs=1e-9)
