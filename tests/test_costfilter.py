"""CostFilter-AD: cost volume vs brute force, shapes, synthetic anomalies, training, round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_mvtec, small_config

from costfilter import Detector
from costfilter.data import load_dataset, split_of
from costfilter.methods.costfilter.filter_net import CostFilterNet
from costfilter.methods.costfilter.losses import filter_loss, soft_iou_loss, ssim_loss
from costfilter.methods.costfilter.volume import cost_volume
from costfilter.synth import AnomalySynthesizer, ProceduralTextures, perlin_mask


def brute_force_costs(q, t, groups):
    """Every cost per (image, group, location), template locations in index order."""
    b, _, h, w = q.shape
    out = []
    for i in range(b):
        per_group = []
        for s, e in groups:
            refs = t[i, :, s:e].permute(0, 2, 3, 1).reshape(-1, e - s)  # every template location, in order
            v = q[i, s:e].reshape(e - s, -1).t()  # (hw, c)
            cos = (v @ refs.t()) / (v.norm(dim=1, keepdim=True) * refs.norm(dim=1))
            per_group.append((1 - cos).t().reshape(-1, h, w))  # (M, h, w)
        out.append(torch.stack(per_group))
    return torch.stack(out)  # (B, L, M, h, w)


def test_sorted_cost_volume_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    q, t = torch.randn(2, 7, 4, 5, generator=g), torch.randn(2, 3, 7, 4, 5, generator=g)
    groups = [(0, 3), (3, 7)]
    v = cost_volume(q, t, groups, k=6, order="sorted")
    assert v.shape == (2, 2, 6, 4, 5)
    assert torch.allclose(v, brute_force_costs(q, t, groups).sort(dim=2).values[:, :, :6], atol=1e-5)
    assert cost_volume(q, t, groups, k=1000, order="sorted").shape[2] == 3 * 4 * 5  # K clamped to all locations


def test_template_order_volume_keeps_the_k_smallest_where_they_lie():
    g = torch.Generator().manual_seed(1)
    q, t = torch.randn(2, 7, 4, 5, generator=g), torch.randn(2, 3, 7, 4, 5, generator=g)
    groups = [(0, 3), (3, 7)]
    v = cost_volume(q, t, groups, k=6)  # (B, K, L, h, w): K channels, groups as depth
    assert v.shape == (2, 6, 2, 4, 5)
    full = brute_force_costs(q, t, groups)  # (B, L, M, h, w)
    for i in range(2):
        for gi in range(2):
            for y in range(4):
                for x in range(5):
                    costs = full[i, gi, :, y, x]
                    kept = costs.topk(6, largest=False).indices.sort().values  # the 6 smallest, in index order
                    assert torch.allclose(v[i, :, gi, y, x], costs[kept], atol=1e-5)
    # more slots than template locations: the rest say "no match" (cost 2)
    wide = cost_volume(q, t, groups, k=70)
    assert wide.shape == (2, 70, 2, 4, 5) and (wide[:, 60:] == 2).all()


def test_identical_template_gives_zero_cost_at_its_own_location():
    q = torch.randn(1, 6, 3, 3)
    v = cost_volume(q, q.unsqueeze(1), [(0, 6)], 4, order="sorted")
    assert torch.allclose(v[:, :, 0], torch.zeros(1, 1, 3, 3), atol=1e-6)
    full = cost_volume(q, q.unsqueeze(1), [(0, 6)], 9)  # all 9 locations, in index order
    for y in range(3):
        for x in range(3):
            assert abs(float(full[0, 3 * y + x, 0, y, x])) < 1e-6


@pytest.mark.parametrize("in_channels,n_classes", [(2, 1), (12, 3)])
def test_filter_net_shapes_and_gradients(in_channels, n_classes):
    net = CostFilterNet(in_channels, feat_channels=10, widths=(4, 8, 8), n_classes=n_classes)
    vol, feats, init = torch.rand(2, in_channels, 5, 16, 16), torch.randn(2, 10, 16, 16), torch.rand(2, 1, 16, 16)
    logits, cls = net(vol, feats, init)
    assert logits.shape == (2, 2, 16, 16)
    assert (cls is None) == (n_classes == 1) and (cls is None or cls.shape == (2, 3))
    logits.sum().backward()
    assert all(p.grad is not None for p in net.enc.parameters())
    assert len(net.reduce) == (4 if in_channels > 4 else 2)  # K slots reduced in two 1×1×1 steps


def test_perlin_masks_are_seeded_and_respect_foreground():
    a = perlin_mask(np.random.default_rng(5), 64)
    assert np.array_equal(a, perlin_mask(np.random.default_rng(5), 64))
    assert a.dtype == bool and 0 < a.mean() < 1
    fg = np.zeros((64, 64), bool)
    fg[16:48, 16:48] = True
    assert not (perlin_mask(np.random.default_rng(1), 64, foreground=fg) & ~fg).any()


@pytest.mark.parametrize("self_fill,photometric", [(0.0, False), (1.0, True)])
def test_synthetic_mask_is_exactly_the_changed_pixels(self_fill, photometric):
    rng = np.random.default_rng(3)
    image = np.full((64, 64, 3), 120, np.uint8)
    image[:, :, 0] = np.arange(64)[:, None] * 3  # a gradient, so a grid-shuffled copy differs from the image
    synth = AnomalySynthesizer(ProceduralTextures([image]), normal_fraction=0.0, self_fill=self_fill,
                               photometric=photometric)
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
    cf.base, tr.steps, tr.val_every, tr.batch_size, tr.n_val, tr.lr = base, steps, 3, 4, 16, 1e-3
    cf.widths, cf.top_k, cf.recon_steps, cf.max_templates, cf.pool_size = (4, 8), 8, 20, 6, 24
    return cfg


@pytest.mark.parametrize("base", ["memory", "reconstruction"])
def test_fit_save_load_round_trip(tmp_path, base):
    root = make_mvtec(tmp_path / "m", categories=("alpha", "beta"), n_train=6)
    det = Detector(cf_config(base), progress=False).fit(root)
    assert det.config.costfilter.n_classes == 2  # class-aware adaptor for the two categories
    report = det.state.training
    assert report.steps == 6 and len(report.validation) == 2
    chosen = report.chosen
    assert chosen["blend"] == pytest.approx(det.model.blend.item()) and chosen["blend"] in (0.0, chosen["best_on_validation"])
    assert chosen["why"].startswith(f"λ = {chosen['blend']:g}")
    paths = [s.path for s in split_of(load_dataset(root), "test")]
    before = det.predict(paths)
    det.save(tmp_path / "cf.ckpt")
    again = Detector.load(tmp_path / "cf.ckpt", progress=False).predict(paths)
    assert [p.score for p in before] == [p.score for p in again]
    assert all(np.array_equal(a.anomaly_map, b.anomaly_map) for a, b in zip(before, again))


def test_cross_fitted_training_sees_test_like_base_maps(tmp_path):
    """Each training image's base map is computed without its own patches: as large as an unseen
    image's, where without cross-fitting it is near zero (its own patches are in the bank)."""
    from costfilter.methods.costfilter.fit import build_pool
    from costfilter.synth import AnomalySynthesizer, ProceduralTextures

    root = make_mvtec(tmp_path / "m", n_train=6)
    cfg = cf_config("memory")
    cfg.memory.coreset_ratio = 1.0  # every patch in the bank: an image seen by it matches itself exactly
    cfg.calibration.holdout_fraction = 0.0  # and every training image is in it
    det = Detector(cfg, progress=False).fit(root)
    paths = [s.path for s in split_of(load_dataset(root), "train")]
    from costfilter.data.loader import iter_batches

    images = next(iter_batches(paths, 64, 16)).images.permute(0, 2, 3, 1).numpy()
    synth = AnomalySynthesizer(ProceduralTextures(), normal_fraction=1.0)  # normal images only
    with torch.no_grad():
        crossed = build_pool(det.model, images, np.zeros(6, np.int64), np.arange(6), synth, 6, 0)
        seen = build_pool(det.model, images, np.zeros(6, np.int64), None, synth, 6, 0)
    assert float(seen.init.abs().max()) < 0.05  # its own patches (float16 in the bank) match it
    assert float(crossed.init.mean()) > 0.3
    assert 0.3 < float(crossed.init.median()) < 3  # the normalised scale a held-out image has (≈ 1)


def _pool(seed: int = 0):
    """40 validation samples at 64 px, half with a 20 px square; base maps are noise plus the
    squares (``signal``) at the 8 × 8 grid."""
    from costfilter.methods.costfilter.fit import Pool

    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(40, 64, 64, dtype=torch.bool)
    masks[:20, 10:30, 10:30] = True
    found = masks[:, ::8, ::8].float()
    # the features carry where the squares are, for a stand-in filter that reads them
    return masks, lambda signal: Pool(torch.zeros(40, 1, 1, 8, 8).half(), found[:, None].half(),
                                      torch.rand(40, 8, 8, generator=g) + signal * found, masks, torch.zeros(40))


class _Filter:
    """A stand-in model for validation: its filter's logits are ``logits(feats)``."""

    def __init__(self, blend_on: str, logits):
        self.blend_on, self.logits = blend_on, logits

    def eval(self):
        return self

    def filter(self, volume, feats, init):
        return self.logits(feats.float()), None


@pytest.mark.parametrize("on", ["filter", "base"])
def test_lambda_rule_keeps_the_base_when_the_filter_does_not_help(monkeypatch, on):
    from costfilter.methods.costfilter import fit as training
    from costfilter.methods.costfilter.fit import Validation

    monkeypatch.setattr(training, "BOOTSTRAP", 40)
    _, pool = _pool()
    silent = _Filter(on, lambda feats: torch.zeros(len(feats), 2, 8, 8))  # its maps are the base's
    choice = Validation(silent, pool(2.0)).choose_blend(seed=0)  # the base finds the squares
    alone = 0.0 if on == "filter" else 1.0  # λ weighs the filter, or the base
    assert choice["blend"] == alone and choice["why"].startswith(f"λ = {alone:g} (the base alone)")


@pytest.mark.parametrize("on", ["filter", "base"])
def test_validation_and_inference_blend_by_one_rule(monkeypatch, on):
    """A filter that finds the squares and a base of noise: validation chooses the filter alone,
    stored in the model's own convention, and inference at that λ gives the filter's map."""
    from costfilter.methods.costfilter import fit as training
    from costfilter.methods.costfilter.fit import Validation

    monkeypatch.setattr(training, "BOOTSTRAP", 40)
    _, pool = _pool(1)
    sure = _Filter(on, lambda feats: torch.cat([-10 * feats, 10 * feats], 1) - 5)
    choice = Validation(sure, pool(0.0), max_blend=1.0).choose_blend(seed=0)
    assert choice["blend"] == (1.0 if on == "filter" else 0.0)  # filter weight 1 under either rule
    cfg = cf_config("memory")
    cfg.costfilter.blend_on = on
    model = Detector(cfg, progress=False).model
    logits, init = torch.randn(3, 2, 8, 8), torch.rand(3, 8, 8)
    prob, base = model.scorer.upsample(logits.softmax(1)[:, 1]), model.scorer.upsample(init)
    for lam in (0.0, 0.3, 1.0):  # the rule written out by hand
        expected = lam * prob + (1 - lam) * base if on == "filter" else (1 - lam) * prob + lam * base
        assert torch.allclose(model.fuse(logits, init, lam), expected)
    assert torch.allclose(model.fuse(logits, init, choice["blend"]), prob)
    # an unfitted model starts as its base alone, under either rule
    assert torch.allclose(model.fuse(logits, init), base)


def test_training_lowers_the_loss(tmp_path):
    root = make_mvtec(tmp_path / "m", n_train=8)
    cfg = cf_config("memory", steps=60)
    cfg.costfilter.training.val_every, cfg.costfilter.training.lr = 60, 3e-3
    det = Detector(cfg, progress=False).fit(root)
    losses = det.state.training.losses
    assert np.mean(losses[-8:]) < 0.9 * np.mean(losses[:8])


def test_resume_continues_from_the_saved_step(tmp_path):
    root = make_mvtec(tmp_path / "m", n_train=6)
    state = tmp_path / "train.state"
    first = Detector(cf_config("reconstruction", steps=3), progress=False).fit(root, resume=state)
    assert state.is_file() and first.state.training.steps == 3
    second = Detector(cf_config("reconstruction", steps=6), progress=False).fit(root, resume=state)
    rep = second.state.training
    assert rep.resumed_from == 3 and rep.steps == 6 and len(rep.losses) == 6
    assert rep.losses[:3] == first.state.training.losses  # the first three steps were not run again


@pytest.mark.parametrize("base", ["memory", "reconstruction"])
def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, base):
    """Stopped at step 3 (the state saved there) and resumed to 6: the same weights, losses,
    validations and scores as 6 steps in one go, bit for bit; the curve log has each step once."""
    import json

    root = make_mvtec(tmp_path / "m", n_train=6)
    paths = sorted((root / "alpha" / "test").rglob("*.png"))
    whole = Detector(cf_config(base, steps=6), progress=False).fit(root)
    state = tmp_path / "train.state"
    Detector(cf_config(base, steps=3), progress=False).fit(root, resume=state)
    resumed = Detector(cf_config(base, steps=6), progress=False).fit(root, resume=state)
    a, b = whole.state.training, resumed.state.training
    assert b.resumed_from == 3 and a.losses == b.losses and a.best_step == b.best_step
    assert [v["score"] for v in a.validation] == [v["score"] for v in b.validation]
    wa, wb = whole.model.state_dict(), resumed.model.state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [p.score for p in whole.predict(paths)] == [p.score for p in resumed.predict(paths)]
    lines = [json.loads(x) for x in (tmp_path / "train.state.curve.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3, 4, 5, 6]
    assert [x["loss"] for x in lines if "loss" in x] == b.losses
    stamps = [x["time"] for x in lines]
    assert stamps == sorted(stamps) and stamps[0] > 1.7e9  # wall-clock, in write order


def test_resume_drops_the_curve_lines_of_a_killed_run(tmp_path):
    """A run killed after its last save wrote curve lines past the saved step (and maybe half a
    line): resuming keeps the log to what the state holds, then goes on."""
    import json

    root = make_mvtec(tmp_path / "m", n_train=6)
    state = tmp_path / "train.state"
    Detector(cf_config("reconstruction", steps=3), progress=False).fit(root, resume=state)
    curve = tmp_path / "train.state.curve.jsonl"
    with open(curve, "a") as fh:
        fh.write(json.dumps({"step": 4, "loss": 9.0}) + "\n" + '{"step": 5, "lo')
    Detector(cf_config("reconstruction", steps=5), progress=False).fit(root, resume=state)
    steps = [json.loads(x)["step"] for x in curve.read_text().splitlines() if "loss" in x]
    assert steps == [1, 2, 3, 4, 5] and 9.0 not in [json.loads(x).get("loss") for x in curve.read_text().splitlines()]


def test_resume_refuses_a_state_from_another_config(tmp_path):
    from costfilter.errors import CostfilterError

    root = make_mvtec(tmp_path / "m", n_train=6)
    state = tmp_path / "train.state"
    Detector(cf_config("reconstruction", steps=3), progress=False).fit(root, resume=state)
    other = cf_config("reconstruction", steps=6)
    other.costfilter.widths = (4, 8, 8)
    with pytest.raises(CostfilterError, match="another configuration"):
        Detector(other, progress=False).fit(root, resume=state)


def test_a_filter_transfers_from_another_checkpoint(tmp_path):
    """--init-filter: with no steps the filter is the source's (class head aside); a filter of
    another shape, or a checkpoint of another method, is a one-line error."""
    from costfilter.errors import CheckpointError

    source_root = make_mvtec(tmp_path / "s", categories=("alpha", "beta"), n_train=6)
    source = Detector(cf_config("memory", steps=3), progress=False).fit(source_root)
    source.save(tmp_path / "source.ckpt")
    target_root = make_mvtec(tmp_path / "t", categories=("gamma",), n_train=6, seed=5)
    cfg = cf_config("memory", steps=0)
    cfg.costfilter.init_filter = str(tmp_path / "source.ckpt")
    det = Detector(cfg, progress=False).fit(target_root)
    theirs = source.model.filter.state_dict()
    ours = det.model.filter.state_dict()
    assert ours.keys() == {k for k in theirs if not k.startswith("classifier.")}  # one class here: no head
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    report = det.state.training
    assert report.started_from["from"] == cfg.costfilter.init_filter and not report.started_from["class_head"]
    assert report.steps == 0 and report.validation[0]["step"] == 0  # validated as it came

    other = cf_config("memory", steps=0)
    other.costfilter.widths, other.costfilter.init_filter = (4, 8, 8), cfg.costfilter.init_filter
    with pytest.raises(CheckpointError, match="its filter does not fit this one"):
        Detector(other, progress=False).fit(target_root)
    memory = small_config()
    Detector(memory, progress=False).fit(target_root).save(tmp_path / "memory.ckpt")
    other = cf_config("memory", steps=0)
    other.costfilter.init_filter = str(tmp_path / "memory.ckpt")
    with pytest.raises(CheckpointError, match="needs a CostFilter-AD checkpoint, not 'memory'"):
        Detector(other, progress=False).fit(target_root)


def test_cli_fit_reports_the_chosen_lambda_and_transfers(tmp_path):
    from click.testing import CliRunner

    from costfilter.cli import main

    root = make_mvtec(tmp_path / "m", n_train=6)
    (tmp_path / "cf.yaml").write_text(cf_config("memory", steps=3).to_yaml())
    args = ["fit", str(root), "--config", str(tmp_path / "cf.yaml"), "--quiet"]
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a.ckpt")])
    assert r.exit_code == 0, r.output
    assert "training: 3 steps" in r.output and "; λ = " in r.output
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b.ckpt"), "--init-filter", str(tmp_path / "a.ckpt"),
                                  "--steps", "0"])
    assert r.exit_code == 0, r.output
    assert "training: 0 steps" in r.output


def test_costfilter_benchmark_compares_base_and_filtered(tmp_path):
    from benchmarks.costfilter_ad import costfilter_tables, run_costfilter

    root = tmp_path / "data"
    make_mvtec(root / "setA", categories=("alpha",), n_train=6)
    cfg = cf_config("memory")
    # one base and one ablation variant: the reconstruction base is fitted in its own tests
    payload = run_costfilter(tmp_path / "cf.json", tmp_path / "figs", masked_root=root, budget_s=1, elpv_budget_s=1,
                             config=cfg, elpv=False, bases=("memory",), curves=("alpha",), ablation=("alpha",),
                             ablation_budget_s=1, variants=("K 8",))
    assert set(payload["runs"]["alpha"]) == {"memory"}
    for base in ("memory",):
        r = payload["runs"]["alpha"][base]
        per = r["lambdas"]["alpha"]
        assert set(per) == {"0.0", "0.01", "0.02", "0.05", "0.1", "0.25", "0.5", "1.0"}
        for m in per.values():
            assert 0.0 <= m["image_auroc"] <= 1.0 and 0.0 <= m["aupro"] <= 1.0
        # 100,000 steps allowed, 1 s of budget: the budget must be what stopped it, after some steps
        assert r["training"]["stopped_by"] == "time budget" and 0 < r["training"]["steps"] < 100000
        assert r["throughput"]["model_over_backbone"] > 0 and str(r["blend"]) in per
    curve = payload["runs"]["alpha"]["memory"]["curve"]
    assert curve and all(0.0 <= c["alpha"] <= 1.0 for c in curve)
    assert set(payload["ablation"]) == {"K 8"}
    assert (tmp_path / "figs" / "costfilter_learning_curves.png").stat().st_size > 1000
    table = costfilter_tables(payload)
    assert "memory base alone" in table and "Ablation" in table and "λ chosen on validation" in table
    payload["runs"]["alpha"]["memory"]["blend"] = float(np.float32(0.1))  # as a saved model's blend reads back
    assert "memory + CostFilter (λ = .1)" in costfilter_tables(payload)


def test_transfer_benchmark_starts_the_target_from_the_source_filter(tmp_path):
    from benchmarks.costfilter_transfer import run_transfer, transfer_table

    root = tmp_path / "data"
    make_mvtec(root / "setA", categories=("alpha",), n_train=6)
    make_mvtec(root / "setB", categories=("beta",), n_train=6, seed=3)
    payload = run_transfer(tmp_path / "results" / "t.json", masked_root=root, targets=("alpha",), source_budget_s=1,
                           finetune_s=1, with_elpv=False, config=cf_config("memory"))
    r = payload["runs"]["alpha"]
    assert r["sources"] == ["beta"] and r["as_is"]["steps"] == 0 and r["finetuned"]["steps"] > 0
    # one base, one seed: the base alone scores the same in both target runs
    assert r["as_is"]["lambdas"]["alpha"]["0.0"] == r["finetuned"]["lambdas"]["alpha"]["0.0"]
    assert (tmp_path / "results" / "tmp-runs" / "transfer-source-alpha-seed0.ckpt").is_file()
    table = transfer_table(payload)
    assert "filter from beta, as is" in table and "fine-tuned 1 s here" in table
    with pytest.raises(ValueError, match="unknown target categories"):
        run_transfer(tmp_path / "x.json", masked_root=root, targets=("gamma",), source_budget_s=1, finetune_s=1)


def test_the_loop_saves_between_validations_and_a_killed_run_resumes_exactly(tmp_path):
    """With save_every_s = 0 the state is saved after every step, not only at validations: a run
    killed at step 4 of 6 (validation every 6) resumes from step 4 and ends where an unbroken run ends."""
    from costfilter.config import TrainingConfig
    from costfilter.training.loop import train

    def run(state, die_at=None):
        torch.manual_seed(0)
        net = torch.nn.Linear(4, 1)
        opt = torch.optim.Adam(net.parameters(), lr=0.1)

        def step(k, rng):
            if k == die_at:
                raise KeyboardInterrupt  # the kill
            x = torch.as_tensor(rng.normal(size=(8, 4)), dtype=torch.float32) + torch.randn(8, 4) * 0.1
            return ((net(x) - x.sum(1, keepdim=True)) ** 2).mean()

        cfg = TrainingConfig(steps=6, val_every=6, save_every_s=0.0)
        report = train(net, lambda k: True, step, lambda: {"score": -float(net.weight.detach().abs().sum())}, opt, cfg,
                       seed=1, plateau=True, resume=state)
        return net, report

    unbroken, rep = run(tmp_path / "a.state")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b.state", die_at=4)
    resumed, rep_b = run(tmp_path / "b.state")
    assert rep_b.resumed_from == 4 and rep_b.losses == rep.losses
    assert torch.equal(resumed.weight, unbroken.weight) and torch.equal(resumed.bias, unbroken.bias)


@pytest.mark.parametrize("change_lr", [False, True])
def test_a_state_from_an_older_version_resumes_when_its_config_reads_as_todays(tmp_path, change_lr):
    """A state whose saved config lacks a field added since (at its default) resumes, bit for bit
    as an uninterrupted run; one whose config differs in a real setting is refused."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from costfilter.errors import CostfilterError
    from costfilter.training.loop import config_fingerprint

    root = make_mvtec(tmp_path / "m", n_train=6)
    state = tmp_path / "train.state"
    Detector(cf_config("memory", steps=3), progress=False).fit(root, resume=state)
    with safe_open(str(state), framework="pt") as fh:
        meta = json.loads(fh.metadata()["meta"])
    older = dict(meta["settings"])
    older.pop("shots")  # a field this version added, at its default
    if change_lr:
        older["costfilter"] = dict(older["costfilter"], training=dict(older["costfilter"]["training"], lr=0.5))
    meta.update(settings=older, fingerprint=config_fingerprint(older, "costfilter"))  # as the older writer saved it
    save_file(load_file(str(state)), str(state), metadata={"meta": json.dumps(meta)})
    if change_lr:
        with pytest.raises(CostfilterError, match="another configuration"):
            Detector(cf_config("memory", steps=6), progress=False).fit(root, resume=state)
        return
    resumed = Detector(cf_config("memory", steps=6), progress=False).fit(root, resume=state)
    whole = Detector(cf_config("memory", steps=6), progress=False).fit(root)
    assert resumed.state.training.resumed_from == 3 and resumed.state.training.losses == whole.state.training.losses
    wa, wb = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
