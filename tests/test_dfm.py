"""DFM: soft-min limits, gradient flow, and an end-to-end fit."""

from __future__ import annotations

import torch
from conftest import make_mvtec, small_config

from costfilter import Detector
from costfilter.config import DetectorConfig
from costfilter.methods.dfm.model import DFMModel, soft_min


def test_soft_min_converges_to_the_hard_minimum():
    d = torch.tensor([[3.0, 1.0, 2.0, 1.5], [0.2, 0.9, 0.4, 5.0]])
    hard = d.min(dim=1).values
    gaps = [float((hard - soft_min(d, tau)).max()) for tau in (1.0, 0.1, 0.01, 0.001)]
    assert all(g >= 0 for g in gaps)  # a lower bound of the minimum
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-2  # shrinking to it as τ → 0


def test_gradients_flow_through_the_matching_head():
    cfg = DetectorConfig(method="dfm")
    cfg.features.image_size = 64
    model = DFMModel(cfg)
    model.set_bank(torch.randn(50, model.features.channels))
    feats = torch.randn(2, model.features.channels, 8, 8)
    model.patch_scores(feats).sum().backward()
    assert model.adapter.weight.grad is not None and model.adapter.weight.grad.abs().sum() > 0
    assert model.log_tau.grad is not None and model.log_tau.grad != 0


def test_identity_adapter_at_small_temperature_matches_the_memory_bank(tmp_path):
    cfg = DetectorConfig(method="dfm")
    cfg.features.image_size = 64
    cfg.dfm.temperature = 1e-4
    model = DFMModel(cfg)
    bank = torch.randn(40, model.features.channels)
    model.set_bank(bank)
    feats = torch.randn(1, model.features.channels, 4, 4)
    q = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
    hard = torch.cdist(q, bank).min(dim=1).values.view(1, 4, 4)
    assert torch.allclose(model.patch_scores(feats), hard, atol=1e-3)


def test_dfm_fit_and_round_trip(tmp_path):
    root = make_mvtec(tmp_path / "m", n_train=8)
    cfg = small_config(coreset_ratio=0.5)
    cfg.method = "dfm"
    tr = cfg.dfm.training
    tr.steps, tr.val_every, tr.batch_size, tr.n_val = 6, 3, 4, 8
    det = Detector(cfg, progress=False).fit(root)
    assert det.state.training.steps == 6 and len(det.state.training.validation) == 3
    assert det.evaluate(root).per_category["alpha"]["image_auroc"] == 1.0
    det.save(tmp_path / "d.ckpt")
    again = Detector.load(tmp_path / "d.ckpt", progress=False)
    paths = [p for p in (root / "alpha" / "test" / "spot").iterdir()]
    assert [p.score for p in det.predict(paths)] == [p.score for p in again.predict(paths)]


def test_end_to_end_dfm_trains_the_tapped_stages_and_keeps_the_bank_in_step(tmp_path):
    """With train_backbone the tapped stages' weights change, earlier ones do not; the checkpoint
    carries the trained weights (and only them); the bank is embedded again from patch ids."""
    from costfilter.methods.dfm.fit import embed_bank

    root = make_mvtec(tmp_path / "m", n_train=8)
    cfg = small_config(coreset_ratio=0.5)
    cfg.method = "dfm"
    cfg.dfm.train_backbone, cfg.dfm.backbone_lr = True, 1.0
    tr = cfg.dfm.training
    tr.steps, tr.val_every, tr.batch_size, tr.n_val, tr.lr = 4, 2, 4, 8, 1e-2
    frozen = DFMModel(small_config()).features.backbone.state_dict()
    det = Detector(cfg, progress=False).fit(root)
    model = det.model
    backbone = model.features.backbone
    first = backbone.first_tapped_block
    assert first > 0 and model.trained_feature_keys
    changed = {k for k, v in backbone.state_dict().items() if not torch.equal(v, frozen[k])}
    assert changed and all(k.startswith("blocks.") and int(k.split(".")[1]) >= first for k in changed)
    # every bank row is a patch of a fit image under the trained features (the bank followed them)
    fit = det.inputs.load(sorted((root / "alpha" / "train" / "good").iterdir()), "fit")[0]
    with torch.no_grad():
        patches = model.features(fit).permute(0, 2, 3, 1).reshape(-1, model.features.channels)
    assert torch.cdist(model.bank, patches).min(dim=1).values.max() < 1e-2 * patches.norm(dim=1).mean()
    det.save(tmp_path / "e2e.ckpt")
    again = Detector.load(tmp_path / "e2e.ckpt", progress=False)
    assert all(torch.equal(again.model.state_dict()[k], v) for k, v in model.state_dict().items())
    paths = sorted((root / "alpha" / "test" / "spot").iterdir())
    assert [p.score for p in det.predict(paths)] == [p.score for p in again.predict(paths)]
    from costfilter.checkpoint import load_checkpoint

    tensors = load_checkpoint(tmp_path / "e2e.ckpt", None)[0]
    assert {k for k in tensors if k.startswith("features.")} == model.trained_feature_keys
    # embedding the bank again from the images gives back the rows the fit selected
    images = torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8)
    ids = torch.tensor([5, 0, 2 * 64 + 7, 70])
    feats = model.features(images).permute(0, 2, 3, 1).reshape(-1, model.features.channels)
    assert torch.allclose(embed_bank(model, images, ids, batch=2), feats[ids].detach(), atol=1e-3)


def test_training_the_backbone_is_refused_where_unsupported():
    import pytest

    from costfilter.backbones.base import Backbone
    from costfilter.errors import CostfilterError

    with pytest.raises(CostfilterError, match="EfficientNet-Lite only"):
        Backbone().unfreeze_tapped_stages()
