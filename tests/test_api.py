"""fit → save → load → predict, bit for bit; a planted defect is found; thresholds from normals only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import defect, make_mvtec, small_config, texture

from costfilter import CostfilterError, Detector
from costfilter.data import load_dataset, split_of


def test_round_trip_reproduces_scores_bit_for_bit(fitted, tmp_path):
    det, root = fitted
    test_paths = [s.path for s in split_of(load_dataset(root), "test")]
    before = det.predict(test_paths)
    ckpt = tmp_path / "m.ckpt"
    det.save(ckpt)
    again = Detector.load(ckpt, progress=False).predict(test_paths)
    assert [p.score for p in before] == [p.score for p in again]
    for a, b in zip(before, again):
        assert np.array_equal(a.anomaly_map, b.anomaly_map)
        assert a.decision == b.decision


def test_planted_defect_is_found_and_localised(fitted):
    det, root = fitted
    ev = det.evaluate(root, keep_maps=True)
    m = ev.per_category["alpha"]
    assert m["image_auroc"] == 1.0
    assert m["pixel_auroc"] > 0.9 and m["aupro"] > 0.5
    assert all(0.0 <= m[k] <= 1.0 for k in ("image_ap", "pixel_ap", "pixel_f1max"))
    maps, masks = ev.maps["alpha"], ev.masks["alpha"]
    # Each defective image is hotter inside its ground-truth square than outside it.
    for amap, mask in zip(maps, masks):
        if mask.any():
            assert amap[mask].mean() > amap[~mask].mean() * 1.2


def test_predict_arrays_and_decisions(fitted):
    det, _ = fitted
    rng = np.random.default_rng(42)
    good, (bad, _) = texture(rng), defect(rng)
    preds = det.predict([good, bad[..., 0]])  # grayscale array accepted too
    assert preds[1].score > preds[0].score
    assert preds[1].decision == "reject"
    assert preds[0].anomaly_map.shape == (64, 64) and preds[0].map_at_original_size().shape == (48, 48)


def test_thresholds_come_from_every_fit_image_scored_leave_one_out(fitted):
    det, root = fitted
    t = det.thresholds
    assert t.held_out and t.source == "leave-one-out"
    assert t.n_calibration == det.state.n_bank_images == 8  # every image in the bank and calibrated
    scores = det.state.calibration_scores
    assert t.image == max(scores)  # 1 % target false alarms on 8 images → the largest score
    assert t.image_false_reject == 0.0
    # Brute force: each fit image against the bank rows that did not come from it.
    from costfilter.data import load_dataset, split_of
    from costfilter.data.loader import iter_batches

    paths = [s.path for s in split_of(load_dataset(root), "train")]
    images = next(iter_batches(paths, det.config.features.image_size, len(paths))).images
    owners = det.model.memory.owners
    assert sorted(set(owners.tolist())) == list(range(8))
    with torch.no_grad():
        feats = det.model.features(images)
        for i, f in enumerate(feats):
            q = f.flatten(1).t().double()
            others = det.model.memory.bank[owners != i].double()
            patch = torch.cdist(q, others).min(dim=1).values.float().view(1, *f.shape[1:])
            # fit keeps its features in float16 for this pass: agreement to float16's precision
            assert float(det.model.scorer(patch)[1]) == pytest.approx(scores[i], rel=1e-3)


def test_strict_holdout_keeps_images_out_of_the_bank(mvtec_root):
    cfg = small_config()
    cfg.calibration.holdout_fraction = 0.25
    det = Detector(cfg, progress=False).fit(mvtec_root, categories=["alpha"])
    t = det.thresholds
    assert t.held_out and t.source == "holdout" and t.n_calibration == 2  # 25 % of 8 training images
    assert det.state.n_bank_images == 6
    assert sorted(set(det.model.memory.owners.tolist())) == list(range(6))


def test_multi_class_fit_on_a_root_of_categories(tmp_path):
    root = make_mvtec(tmp_path / "m", categories=("alpha", "beta"), n_train=4)
    det = Detector(small_config(), progress=False).fit(root)
    assert det.state.categories == ["alpha", "beta"]
    ev = det.evaluate(root)
    assert set(ev.per_category) == {"alpha", "beta"}
    assert ev.mean["image_auroc"] == pytest.approx(np.mean([m["image_auroc"] for m in ev.per_category.values()]))


def test_unfitted_and_bad_config_errors():
    with pytest.raises(CostfilterError, match="not fitted"):
        Detector(small_config(), progress=False).predict(np.zeros((8, 8, 3), np.uint8))
    cfg = small_config()
    cfg.features.image_size = 100
    with pytest.raises(CostfilterError, match="multiple of 32"):
        Detector(cfg)


def test_fit_is_deterministic(tmp_path):
    root = make_mvtec(tmp_path / "m", n_train=6)
    a = Detector(small_config(), progress=False).fit(root)
    b = Detector(small_config(), progress=False).fit(root)
    assert torch.equal(a.model.memory.bank, b.model.memory.bank)
    assert a.thresholds == b.thresholds


def test_few_shot_fits_on_n_seeded_images_per_category(tmp_path):
    root = make_mvtec(tmp_path / "m", categories=("alpha", "beta"), n_train=6)
    cfg = small_config()
    cfg.shots = 2
    det = Detector(cfg, progress=False).fit(root)
    again = Detector(small_config(), progress=False)
    again.config.shots, again.config.seed = 2, 0
    again.fit(root)
    assert det.state.n_train_images == 4 and len(det.state.training_hashes) == 4  # 2 per category
    assert det.state.training_hashes == again.state.training_hashes  # the same seeded draw
    other = small_config()
    other.shots, other.seed = 2, 1
    assert Detector(other, progress=False).fit(root).state.training_hashes != det.state.training_hashes
    cfg.shots = 7
    with pytest.raises(CostfilterError, match="shots 7: category 'alpha' has only 6"):
        Detector(cfg, progress=False).fit(root)
    cfg.shots = 1
    with pytest.raises(CostfilterError, match="shots must be ≥ 2, got 1: with one image none can be scored"):
        Detector(cfg, progress=False)
