"""Continual learning (``fit --continue``): a category added to a fitted model, earlier ones kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_mvtec, read_results, small_config
from PIL import Image

from costfilter import Detector
from costfilter.cli import main
from costfilter.errors import CostfilterError


def transposed(root: Path) -> Path:
    """The tree's images turned 90°: stripes across instead of along, another product to the bank."""
    for p in root.rglob("*.png"):
        Image.fromarray(np.asarray(Image.open(p)).swapaxes(0, 1).copy()).save(p)
    return root


@pytest.fixture(scope="module")
def two_products(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("continual")
    return make_mvtec(base / "a", categories=("alpha",), seed=1), transposed(make_mvtec(base / "b", categories=("beta",), seed=2))


def memory_config():
    return small_config(coreset_ratio=0.5)


def test_memory_bank_appends_a_category_and_leaves_the_first_untouched(two_products, tmp_path):
    a, b = two_products
    tests_a, tests_b = sorted((a / "alpha" / "test").rglob("*.png")), sorted((b / "beta" / "test").rglob("*.png"))
    only_a = Detector(memory_config(), progress=False).fit(a)
    only_b = Detector(memory_config(), progress=False).fit(b)
    before_a = only_a.predict(tests_a)
    bank_a = only_a.model.memory.bank.clone()

    both = Detector(memory_config(), progress=False).fit(a).extend(b)
    assert both.learned == ["alpha", "beta"]
    assert np.array_equal(both.model.memory.bank[: len(bank_a)].numpy(), bank_a.numpy())  # old rows untouched
    after = both.predict(tests_a + tests_b)
    assert [p.category for p in after] == ["alpha"] * len(tests_a) + ["beta"] * len(tests_b)
    # Scored against its own rows only, with its own thresholds: exactly what each model alone gives.
    assert [p.score for p in after[: len(tests_a)]] == [p.score for p in before_a]
    assert [p.decision for p in after[: len(tests_a)]] == [p.decision for p in before_a]
    assert np.allclose([p.score for p in after[len(tests_a):]], [p.score for p in only_b.predict(tests_b)], rtol=1e-5)
    assert both.state.learned[1].thresholds.image == pytest.approx(only_b.thresholds.image, rel=1e-5)
    assert both.state.learned[0].thresholds.image == only_a.thresholds.image

    both.save(tmp_path / "ab.ckpt")
    again = Detector.load(tmp_path / "ab.ckpt", progress=False)
    assert again.learned == ["alpha", "beta"]
    assert [p.score for p in again.predict(tests_a + tests_b)] == [p.score for p in after]
    with pytest.raises(CostfilterError, match="already learned"):
        again.extend(b)

    # The service decides with the routed category's thresholds and says which one it was.
    from fastapi.testclient import TestClient

    from costfilter.serve import HistoryStore, create_app

    with TestClient(create_app(again, HistoryStore(tmp_path / "store"), allowed_hosts=["testserver"])) as c:
        r = c.post("/predict", files={"file": ("b.png", tests_b[-1].read_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["category"] == "beta"
    assert r.json()["image_threshold"] == again.state.learned[1].thresholds.image != again.thresholds.image


def test_dfm_continues_with_replay_within_tolerance(two_products):
    a, b = two_products
    tests_a, tests_b = sorted((a / "alpha" / "test").rglob("*.png")), sorted((b / "beta" / "test").rglob("*.png"))
    cfg = memory_config()
    cfg.method = "dfm"
    tr = cfg.dfm.training
    tr.steps, tr.val_every, tr.batch_size, tr.n_val = 6, 3, 4, 8
    cfg.dfm.replay_images = 4
    det = Detector(cfg, progress=False).fit(a)
    assert len(det.model.replay) == 4
    before = np.array([p.score for p in det.predict(tests_a)])
    det.extend(b)
    assert len(det.model.replay) == 8 and det.model.replay_category.tolist() == [0] * 4 + [1] * 4
    after = det.predict(tests_a + tests_b)
    assert [p.category for p in after] == ["alpha"] * len(tests_a) + ["beta"] * len(tests_b)
    drift = np.abs(np.array([p.score for p in after[: len(tests_a)]]) - before) / before
    # The adapter is shared, so old scores move; replay keeps them within 10 % here.
    assert drift.max() < 0.10
    labels = [0 if "good" in str(p) else 1 for p in tests_a]
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(labels, [p.score for p in after[: len(tests_a)]]) == 1.0


def test_cli_continue_card_and_per_category_calibration(two_products, tmp_path):
    a, b = two_products
    run = CliRunner().invoke
    first, second = tmp_path / "a.ckpt", tmp_path / "ab.ckpt"
    assert run(main, ["fit", str(a), "--out", str(first), "--image-size", "64", "--coreset-ratio", "0.5", "-q"]).exit_code == 0
    res = run(main, ["fit", str(b), "--continue", str(first), "--out", str(second), "--name", "turned", "-q"])
    assert res.exit_code == 0, res.output
    assert "categories, in the order learned: alpha, turned" in res.output
    refused = run(main, ["fit", str(b), "--continue", str(first), "--out", str(tmp_path / "x.ckpt"), "--backbone", "x"])
    assert refused.exit_code != 0 and "--backbone" in refused.output and "keeps the model's own settings" in refused.output
    again = run(main, ["fit", str(b), "--continue", str(first), "--out", str(second)])
    assert again.exit_code != 0 and "exists" in again.output  # no overwrite without --force

    card = run(main, ["info", str(second)])
    assert "1. alpha" in card.output and "2. turned" in card.output

    out = tmp_path / "pred"
    tests = sorted((b / "beta" / "test").rglob("*.png"))
    assert run(main, ["predict", str(second), *map(str, tests), "--out", str(out), "-q"]).exit_code == 0
    assert {r["category"] for r in read_results(out).values()} == {"turned"}

    good = sorted((b / "beta" / "test" / "good").glob("*.png"))
    nameless = run(main, ["calibrate", str(second), *map(str, good), "--out", str(tmp_path / "c.ckpt")])
    assert nameless.exit_code != 0 and "alpha, turned" in nameless.output
    named = run(main, ["calibrate", str(second), *map(str, good), "--category", "turned", "--out", str(tmp_path / "c.ckpt")])
    assert named.exit_code == 0, named.output
    recal = Detector.load(tmp_path / "c.ckpt", progress=False)
    assert recal.state.learned[1].thresholds.source == "new" and recal.state.learned[0].thresholds.source == "leave-one-out"

    export = run(main, ["export", str(second), "--out", str(tmp_path / "m.onnx")])
    assert export.exit_code != 0 and "several learned categories" in export.output
