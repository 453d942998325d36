"""Operating points, review band, regions, out-of-distribution flag, run records, doctor."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_mvtec, save, small_config
from scipy.stats import binomtest

from costfilter import CostfilterError, Detector
from costfilter.cli import main
from costfilter.decisions import clopper_pearson, operating_point, support_warning
from costfilter.provenance import inputs_digest
from costfilter.results import Prediction
from costfilter.toy_images import planted_defect, texture


@pytest.mark.parametrize("k, n", [(0, 10), (1, 50), (7, 200), (50, 50), (3, 1000)])
def test_clopper_pearson_equals_scipy(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert clopper_pearson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_operating_point_on_known_scores_and_support_warning():
    p = operating_point(np.arange(1.0, 201.0), 0.01, "balanced")
    assert p.threshold == 198.0 and p.false_reject == 0.01  # 2 of 200 above
    assert p.ci_low < 0.01 < p.ci_high
    assert "cannot confirm" in support_warning(50, 0.001)
    assert support_warning(5000, 0.001) is None


def test_review_band_and_fixed_threshold(fitted):
    det = copy.deepcopy(fitted[0])  # the session's detector stays as it was fitted
    t = det.thresholds
    t.review = t.image - 1.0
    assert det.decide(t.image + 0.1) == "reject"
    assert det.decide(t.image - 0.5) == "review"
    assert det.decide(t.image - 1.5) == "pass"
    with pytest.raises(CostfilterError, match="must stay below"):
        det.set_operating_point(threshold=t.review - 1)
    p = det.set_operating_point(threshold=t.image + 5)
    assert p.name == "fixed" and det.thresholds.image == p.threshold
    assert det.state.operating_points[0] is p and fitted[0].thresholds.image != p.threshold


def test_regions_against_a_hand_built_map():
    amap = np.zeros((20, 30), np.float32)
    amap[2:5, 3:9] = 2.0  # 3 × 6 = 18 px, peak 2
    amap[10:12, 20:22] = 5.0  # 2 × 2 = 4 px, peak 5
    amap[15, 0] = 9.0  # a single hot pixel
    pred = Prediction("x", 1.0, "reject", amap, (20, 30))
    regions = pred.regions(1.0, min_area=2)
    assert [(r.box, r.area_px) for r in regions] == [((20, 10, 21, 11), 4), ((3, 2, 8, 4), 18)]
    assert regions[1].area_pct == pytest.approx(100 * 18 / 600)
    assert regions[0].peak == 5.0 and regions[1].mean == 2.0
    assert len(pred.regions(1.0, min_area=1)) == 3


def test_unknown_flag_on_a_synthetic_shift_but_not_on_defects(tmp_path):
    rng = np.random.default_rng(0)
    size = 256  # the default input size: features there are local enough for a defect to stay local
    for i in range(12):
        save(texture(rng, size), tmp_path / "good" / f"{i}.png")
    cfg = small_config()
    cfg.features.image_size = size
    cfg.calibration.ood_factor = 2.0
    det = Detector(cfg, progress=False).fit(tmp_path / "good", "folder")
    good, (bad, _) = texture(rng, size), planted_defect(rng, size)
    yy, xx = np.mgrid[0:size, 0:size]
    other_product = np.dstack([((xx // 16 + yy // 16) % 2 * 200 + 20).astype(np.uint8)] * 3)
    dim_light = (texture(rng, size) * 0.35).astype(np.uint8)
    preds = det.predict([good, bad, other_product, dim_light])
    assert [p.decision for p in preds[1:]] == ["reject", "unknown", "unknown"]
    assert preds[0].decision != "unknown" and preds[0].score < preds[1].score


def test_inputs_digest_changes_when_a_file_changes(tmp_path):
    files = [tmp_path / "a.png", tmp_path / "b.png"]
    for f in files:
        f.write_bytes(b"x" * 10)
    d1 = inputs_digest(files)
    assert inputs_digest(files[::-1]) == d1  # order does not matter
    files[1].write_bytes(b"x" * 9 + b"y")  # same size, other content
    assert inputs_digest(files)["sha256"] != d1["sha256"]


def test_cli_records_calibrate_and_model_card(tmp_path):
    root = make_mvtec(tmp_path / "data", n_train=10)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(small_config().to_yaml())
    ckpt = tmp_path / "m.ckpt"
    r = CliRunner().invoke(main, ["fit", str(root), "--out", str(ckpt), "--config", str(cfg), "-q",
                                  "--review-band", "0.2"])
    assert r.exit_code == 0, r.output
    assert "strict" in r.output and "warning (lenient)" in r.output  # 2 held-out images cannot show 0.1 %
    rec = json.loads((tmp_path / "m.ckpt.fit-record.json").read_text())
    assert rec["inputs"]["count"] == 10 and rec["model_sha256"] and rec["environment"]["cpu_count"]
    new_good = root / "alpha" / "test" / "good"
    r = CliRunner().invoke(main, ["calibrate", str(ckpt), str(new_good), "--out", str(tmp_path / "re.ckpt"), "-q"])
    assert r.exit_code == 0, r.output
    assert "scores moved" in r.output and "KS statistic" in r.output
    r = CliRunner().invoke(main, ["info", str(tmp_path / "re.ckpt")])
    assert r.exit_code == 0 and "data digest" in r.output and "review above" in r.output
    out = tmp_path / "pred"
    r = CliRunner().invoke(main, ["predict", str(ckpt), str(root / "alpha" / "test" / "spot"), "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert all(x["decision"] == "reject" and x["n_regions"] >= 1 and x["regions"][0]["area_px"] > 0 for x in lines)
    assert json.loads((out / "run-record.json").read_text())["decisions"]["reject"] == 3
    r = CliRunner().invoke(main, ["test", str(ckpt), str(root), "-q", "--json", str(tmp_path / "t.json")])
    assert r.exit_code == 0 and "I-AUROC 95 % CI" in r.output
    assert (tmp_path / "t.json.record.json").is_file()


def test_doctor_passes_offline():
    r = CliRunner().invoke(main, ["doctor"])
    assert r.exit_code == 0, r.output
    assert r.output.count("✓") >= 3 and "✗" not in r.output


def test_bootstrap_intervals_together_equal_each_one_alone_and_hold_the_estimate():
    from costfilter.decisions import bootstrap_intervals
    from costfilter.metrics import auroc, average_precision, binary_curve

    rng = np.random.default_rng(4)
    labels = np.r_[np.zeros(40, int), np.ones(25, int)]
    scores = rng.normal(size=65) + labels
    both = bootstrap_intervals(scores, labels, lambda s, y: (auroc(binary_curve(s, y)),
                                                             average_precision(binary_curve(s, y))), ["roc", "ap"])
    assert both["roc"] == bootstrap_intervals(scores, labels, lambda s, y: (auroc(binary_curve(s, y)),), ["roc"])["roc"]
    assert both["ap"] == bootstrap_intervals(scores, labels, lambda s, y: (average_precision(binary_curve(s, y)),),
                                             ["ap"])["ap"]
    lo, hi = both["roc"]
    assert lo < auroc(binary_curve(scores, labels)) < hi and hi - lo < 0.4
    one_class = bootstrap_intervals(scores[:40], labels[:40], lambda s, y: (0.0, 0.0), ["roc", "ap"])
    assert all(np.isnan(v).all() for v in one_class.values())


def test_points_on_test_count_rejects_and_catches_against_brute_force():
    from costfilter.decisions import OperatingPoint, points_on_test

    rng = np.random.default_rng(3)
    scores = np.r_[rng.normal(0, 1, 40), rng.normal(2, 1, 25)]
    labels = np.r_[np.zeros(40, int), np.ones(25, int)]
    points = [OperatingPoint("a", 0.05, 1.2, 0.05, 0.0, 0.1, 100), OperatingPoint("b", 0.01, 2.0, 0.01, 0.0, 0.05, 100)]
    for p, t in zip(points, points_on_test(points, scores, labels)):
        k_fr = sum(1 for s, y in zip(scores, labels) if y == 0 and s > p.threshold)
        k_rec = sum(1 for s, y in zip(scores, labels) if y == 1 and s > p.threshold)
        assert (t.n_good, t.n_defective) == (40, 25)
        assert t.false_reject == k_fr / 40 and t.recall == k_rec / 25
        assert t.false_reject_ci == clopper_pearson(k_fr, 40) and t.recall_ci == clopper_pearson(k_rec, 25)
    only_good = points_on_test(points, scores[:40], labels[:40])[0]
    assert only_good.n_defective == 0 and np.isnan(only_good.recall) and only_good.recall_ci == (0.0, 1.0)
