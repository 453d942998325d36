"""CostFilter-AD: cost volume vs brute force, shapes, synthetic anomalies, training, round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_mvtec, small_config
from costfilter import Detector
from costfilter.costvolume import cost_volume
from costfilter.data import load_dataset, split_of
from costfilter.filtering import CostFilterNet
from costfilter.synth import AnomalySynthesizer, ProceduralTextures, perlin_mask
from costfilter.training.losses import filter_loss, soft_iou_loss, ssim_loss


def brute_force_volume(q, t, groups, k):
    b, _, h, w = q.shape
    out = torch.zeros(b, len(groups), k, h, w)
    for i in range(b):
        for g, (s, e) in enumerate(groups):
            refs = t[i, :, s:e].permute(0, 2, 3, 1).reshape(-1, e - s)  # every template location
            for y in range(h):
                for x in range(w):
                    v = q[i, s:e, y, x]
                    cos = (refs @ v) / (refs.norm(dim=1) * v.norm())
                    out[i, g, :, y, x] = torch.sort(1 - cos).values[:k]
    return out


def test_cost_volume_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    q, t = torch.randn(2, 7, 4, 5, generator=g), torch.randn(2, 3, 7, 4, 5, generator=g)
    groups = [(0, 3), (3, 7)]
    v = cost_volume(q, t, groups, k=6)
    assert v.shape == (2, 2, 6, 4, 5)
    assert torch.allclose(v, brute_force_volume(q, t, groups, 6), atol=1e-5)
    assert (v[:, :, 1:] >= v[:, :, :-1]).all()  # ascending along the matching dim
    assert cost_volume(q, t, groups, k=1000).shape[2] == 3 * 4 * 5  # K clamped to all locations


def test_identical_template_gives_zero_first_cost():
    q = torch.randn(1, 6, 3, 3)
    v = cost_volume(q, q.unsqueeze(1), [(0, 6)], 4)
    assert torch.allclose(v[:, :, 0], torch.zeros(1, 1, 3, 3), atol=1e-6)


@pytest.mark.parametrize("n_classes", [1, 3])
def test_filter_net_shapes_and_gradients(n_classes):
    net = CostFilterNet(groups=2, feat_channels=10, widths=(4, 8, 8), n_classes=n_classes)
    vol, feats, init = torch.rand(2, 2, 5, 16, 16), torch.randn(2, 10, 16, 16), torch.rand(2, 1, 16, 16)
    logits, cls = net(vol, feats, init)
    assert logits.shape == (2, 2, 16, 16)
    assert (cls is None) == (n_classes == 1) and (cls is None or cls.shape == (2, 3))
    logits.sum().backward()
    assert all(p.grad is not None for p in net.enc.parameters())


def test_perlin_masks_are_seeded_and_respect_foreground():
    a = perlin_mask(np.random.default_rng(5), 64)
    assert np.array_equal(a, perlin_mask(np.random.default_rng(5), 64))
    assert a.dtype == bool and 0 < a.mean() < 1
    fg = np.zeros((64, 64), bool)
    fg[16:48, 16:48] = True
    assert not (perlin_mask(np.random.default_rng(1), 64, foreground=fg) & ~fg).any()


def test_synthetic_mask_is_exactly_the_changed_pixels():
    rng = np.random.default_rng(3)
    image = np.full((64, 64, 3), 120, np.uint8)
    synth = AnomalySynthesizer(ProceduralTextures([image]), normal_fraction=0.0)
    for _ in range(5):
        out, mask = synth(rng, image)
        changed = (out != image).any(axis=2)
        assert np.array_equal(mask, changed) and mask.any()
    normal = AnomalySynthesizer(ProceduralTextures(), normal_fraction=1.0)
    out, mask = normal(rng, image)
    assert np.array_equal(out, image) and not mask.any()


def test_losses_are_zero_for_perfect_prediction():
    m = torch.zeros(2, 16, 16)
    m[0, 4:8, 4:8] = 1
    assert float(ssim_loss(m, m)) == pytest.approx(0, abs=1e-5)
    assert float(soft_iou_loss(m, m)) == pytest.approx(0, abs=1e-6)
    perfect = torch.stack([1 - m, m], 1) * 40 - 20  # confident logits
    parts = filter_loss(perfect, m)
    assert float(parts["total"]) < 1e-3
    wrong = filter_loss(-perfect, m)
    assert float(wrong["total"]) > 1.0


def cf_config(base: str, steps: int = 6):
    cfg = small_config(coreset_ratio=0.5)
    cfg.method = "costfilter"
    cf, tr = cfg.costfilter, cfg.costfilter.training
    cf.base, tr.steps, tr.val_every, tr.batch_size, tr.n_val = base, steps, 3, 4, 8
    cf.widths, cf.top_k, cf.recon_steps, cf.max_templates = (4, 8), 4, 20, 6
    return cfg


@pytest.mark.parametrize("base", ["memory", "reconstruction"])
def test_fit_save_load_round_trip(tmp_path, base):
    root = make_mvtec(tmp_path / "m", categories=("alpha", "beta"), n_train=6)
    det = Detector(cf_config(base), progress=False).fit(root)
    assert det.config.costfilter.n_classes == 2  # class-aware adaptor for the two categories
    report = det.state.training
    assert report.steps == 6 and len(report.validation) == 2
    assert report.chosen["blend"] == pytest.approx(det.model.blend.item())
    assert 0.0 <= det.model.blend.item() <= 1.0
    paths = [s.path for s in split_of(load_dataset(root), "test")]
    before = det.predict(paths)
    det.save(tmp_path / "cf.ckpt")
    again = Detector.load(tmp_path / "cf.ckpt", progress=False).predict(paths)
    assert [p.score for p in before] == [p.score for p in again]
    assert all(np.array_equal(a.anomaly_map, b.anomaly_map) for a, b in zip(before, again))


def test_training_lowers_the_loss(tmp_path):
    root = make_mvtec(tmp_path / "m", n_train=8)
    cfg = cf_config("memory", steps=40)
    cfg.costfilter.training.val_every = 40
    det = Detector(cfg, progress=False).fit(root)
    losses = det.state.training.losses
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])


def test_resume_continues_from_the_saved_step(tmp_path):
    root = make_mvtec(tmp_path / "m", n_train=6)
    state = tmp_path / "train.state"
    first = Detector(cf_config("reconstruction", steps=3), progress=False).fit(root, resume=state)
    assert state.is_file() and first.state.training.steps == 3
    second = Detector(cf_config("reconstruction", steps=6), progress=False).fit(root, resume=state)
    rep = second.state.training
    assert rep.resumed_from == 3 and rep.steps == 6 and len(rep.losses) == 6
    assert rep.losses[:3] == first.state.training.losses  # the first three steps were not run again


def test_resume_refuses_a_state_from_another_config(tmp_path):
    from costfilter.errors import CostfilterError

    root = make_mvtec(tmp_path / "m", n_train=6)
    state = tmp_path / "train.state"
    Detector(cf_config("reconstruction", steps=3), progress=False).fit(root, resume=state)
    other = cf_config("reconstruction", steps=6)
    other.costfilter.widths = (4, 8, 8)
    with pytest.raises(CostfilterError, match="another configuration"):
        Detector(other, progress=False).fit(root, resume=state)


def test_costfilter_benchmark_compares_base_and_filtered(tmp_path):
    from costfilter.bench.costfilter import run_costfilter

    root = tmp_path / "data"
    make_mvtec(root / "setA", categories=("alpha",), n_train=6)
    cfg = cf_config("memory")
    payload = run_costfilter(tmp_path / "cf.json", tmp_path / "figs", masked_root=root, budget_s=1, elpv_budget_s=1,
                             config=cfg, elpv=False)
    for base in ("memory", "reconstruction"):
        r = payload["runs"]["alpha"][base]
        for variant in ("base", "filtered", "filter_only"):
            m = r["metrics"][variant]["alpha"]
            assert 0.0 <= m["image_auroc"] <= 1.0 and 0.0 <= m["aupro"] <= 1.0
        # 100,000 steps allowed, 1 s of budget: the budget must be what stopped it, after some steps
        assert r["blends"]["base"] == 1.0 and r["training"]["stopped_by"] == "time budget"
        assert 0 < r["training"]["steps"] < 100000
    assert (tmp_path / "figs" / "costfilter_scores.png").stat().st_size > 1000
