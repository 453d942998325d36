"""Screening the good training images: the robust rule against an independent reference, and
a planted defective image flagged (and, with ``contamination auto``, left out) by every fitted
method, the CLI, the model card and the run record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_mvtec, save, small_config

from costfilter import Detector
from costfilter.cli import main
from costfilter.errors import CostfilterError
from costfilter.screening import robust_z, screen
from costfilter.toy_images import planted_defect


def test_robust_z_matches_scipy():
    from scipy.stats import median_abs_deviation

    rng = np.random.default_rng(0)
    s = rng.gamma(3.0, size=101)
    expected = (s - np.median(s)) / median_abs_deviation(s, scale="normal")
    assert np.allclose(robust_z(s), expected)
    assert np.isfinite(robust_z([1.0, 1.0, 1.0, 5.0])).all()  # MAD 0: no division by zero


def test_screen_rules():
    paths = [f"{i}.png" for i in range(10)]
    scores = [1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 0.98, 1.01, 9.0, 1.03]
    flag_only = screen(paths, scores, 0.0, 3.5)
    assert [f.path for f in flag_only.flagged] == ["8.png"] and flag_only.removed == []
    assert screen(paths, scores, "auto", 3.5).removed == ["8.png"]
    assert screen(paths, scores, 0.2, 3.5).removed == ["8.png", "1.png"]  # the top 20 % by score
    assert len(screen(paths[:3], [1.0, 9.0, 8.0], 0.45, 3.5).removed) == 1  # two images always stay


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    """A tiny MVTec tree whose good training folder holds one image with a planted defect."""
    root = make_mvtec(tmp_path_factory.mktemp("dirty") / "data", categories=("alpha",), n_train=12)
    bad = save(planted_defect(np.random.default_rng(7), 48)[0], root / "alpha" / "train" / "good" / "zz.png")
    return root, str(bad)


def _fit(root: Path, method: str, contamination: object) -> Detector:
    cfg = small_config()
    cfg.method = method
    cfg.screening.contamination = contamination
    for training in (cfg.dfm.training, cfg.costfilter.training):
        training.steps, training.batch_size, training.val_every, training.n_val = 4, 4, 4, 4
    return Detector(cfg, progress=False).fit(root)


@pytest.mark.parametrize("method", ["memory", "dfm", "costfilter"])
def test_a_planted_defect_is_flagged_and_left_out_with_auto(dirty, method):
    root, bad = dirty
    kept = _fit(root, method, 0.0)
    assert [f["path"] for f in kept.state.screening["flagged"]] == [bad]
    assert kept.state.screening["removed"] == [] and kept.state.n_train_images == 13
    auto = _fit(root, method, "auto")
    assert auto.state.screening["removed"] == [bad] and auto.state.n_train_images == 12
    if method == "memory":
        # The bank holds no row of it, so it now scores as a defect does; kept, its own rows hide it.
        assert auto.predict([bad])[0].decision == "reject"
        assert kept.predict([bad])[0].score < auto.predict([bad])[0].score
        assert kept.state.screening["scores_from"] == "leave-one-out"
    else:
        assert "memory bank" in kept.state.screening["scores_from"]


def test_removal_helps_the_pixel_metrics(dirty):
    root, _ = dirty
    kept, auto = _fit(root, "memory", 0.0), _fit(root, "memory", "auto")
    assert auto.evaluate(root).mean["pixel_auroc"] > kept.evaluate(root).mean["pixel_auroc"]


def test_cli_lists_draws_and_records_the_flagged_images(dirty, tmp_path):
    root, bad = dirty
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(small_config().to_yaml())
    out = tmp_path / "m.ckpt"
    r = CliRunner().invoke(main, ["fit", str(root), "--config", str(cfg), "--out", str(out), "-q",
                                  "--contamination", "auto"])
    assert r.exit_code == 0, r.output
    assert "flagged 1 of 13 training images" in r.output and "zz.png" in r.output
    pictures = sorted(p.name for p in (tmp_path / "m.ckpt.flagged").iterdir())
    assert "zz_overlay.png" in pictures and "results.csv" in pictures
    row = json.loads((tmp_path / "m.ckpt.flagged" / "results.jsonl").read_text())
    assert row["decision"] == "reject" and row["n_regions"] >= 1
    record = json.loads((tmp_path / "m.ckpt.fit-record.json").read_text())
    assert record["screening"]["removed"] == [bad]
    info = CliRunner().invoke(main, ["info", str(out)])
    assert "1 of 13 training images flagged" in info.output and "left out" in info.output
    again = CliRunner().invoke(main, ["fit", str(root), "--config", str(cfg), "--out", str(tmp_path / "n.ckpt"),
                                      "--contamination", "lots"])
    assert again.exit_code == 2 and "'auto' or a fraction" in again.output


def test_contamination_values_are_checked():
    cfg = small_config()
    cfg.screening.contamination = 0.6
    with pytest.raises(CostfilterError, match="contamination"):
        Detector(cfg)


def test_contaminated_benchmark_split_moves_defects_into_train(tmp_path):
    from benchmarks.contamination import contaminated
    from costfilter.data import load_dataset

    samples = load_dataset(make_mvtec(tmp_path / "d", categories=("alpha",), n_train=10), "mvtec")
    mixed, planted = contaminated(samples, 0.2, seed=0)
    assert len(planted) == 2
    moved = [s for s in mixed if str(s.path) in planted]
    assert all(s.split == "train" and s.label == 0 and s.mask is None for s in moved)
    assert sum(s.split == "test" for s in mixed) == sum(s.split == "test" for s in samples) - 2
    assert contaminated(samples, 0.2, seed=0)[1] == planted  # seeded
