"""``--image-size auto``: sizes tried smallest first on held-out good images with synthetic
anomalies (never the test split), the speed rule, the choice kept in the checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_mvtec, small_config

from costfilter import Detector
from costfilter.cli import main
from costfilter.data import load_dataset
from costfilter.errors import CostfilterError
from costfilter.sizing import SizeChoice, choose_image_size, fit_auto_size, validation_set

SIZES = (64, 96, 128)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_mvtec(tmp_path_factory.mktemp("sizing") / "m", n_train=10)
    for p in (root / "alpha" / "test").rglob("*.png"):  # the choice must never read the test split
        p.write_bytes(b"not an image")
    return root


def test_validation_set_pairs_each_held_out_image_with_a_synthetic_anomaly(data):
    paths = sorted((data / "alpha" / "train" / "good").glob("*.png"))[:3]
    images, masks, labels = validation_set(paths, small_config(), seed=0)
    assert labels.count(0) == 3 and labels.count(1) >= 1 and len(images) == len(labels) == len(masks)
    assert all(x.shape == (512, 512, 3) for x in images) and masks.shape[1:] == (256, 256)
    assert all(m.any() == bool(y) for m, y in zip(masks, labels))
    again = validation_set(paths, small_config(), seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(images, again[0]))  # seeded


def test_auto_keeps_the_best_validated_size_and_saves_its_trials(data, tmp_path):
    det = fit_auto_size(small_config(), load_dataset(data), candidates=SIZES, floor=0.0, progress=False)
    choice = SizeChoice.from_dict(det.state.image_size_choice)
    assert [t.size for t in choice.trials] == list(SIZES) and all(t.allowed for t in choice.trials)
    best = max(choice.trials, key=lambda t: (t.score, -t.size))
    assert choice.size == best.size == det.config.features.image_size
    assert choice.held_out == 2 and choice.reference_images_per_s > 0
    assert all(0 <= t.aupro <= 1 and 0 <= t.pixel_ap <= 1 and t.images_per_s > 0 for t in choice.trials)
    assert det.state.n_train_images == 10  # the final fit takes every good image
    det.save(tmp_path / "m.ckpt")
    loaded = Detector.load(tmp_path / "m.ckpt")
    assert loaded.state.image_size_choice == det.state.image_size_choice
    assert str(best.size) in choice.table() and "chosen" in choice.table()


def test_a_size_below_the_speed_floor_ends_the_search_and_the_smallest_stays(data):
    choice = choose_image_size(load_dataset(data), small_config(), candidates=SIZES, floor=math.inf, progress=False)
    assert [(t.size, t.allowed) for t in choice.trials] == [(64, True), (96, False)]
    assert choice.size == 64


def test_too_few_good_images_is_one_clear_error(tmp_path):
    root = make_mvtec(tmp_path / "m", n_train=4)
    with pytest.raises(CostfilterError, match="at least 5, got 4"):
        choose_image_size(load_dataset(root), small_config(), candidates=SIZES)


def test_cli_image_size_auto(data, tmp_path, monkeypatch):
    import costfilter.sizing

    monkeypatch.setattr(costfilter.sizing, "CANDIDATES", (64, 96))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(small_config().to_yaml())
    out = tmp_path / "m.ckpt"
    r = CliRunner().invoke(main, ["fit", str(data), "-o", str(out), "--config", str(cfg), "--image-size", "auto", "-q"])
    assert r.exit_code == 0, r.output
    chosen = Detector.load(out).config.features.image_size
    assert f"--image-size auto chose {chosen} px" in r.output and chosen in (64, 96)
    bad = CliRunner().invoke(main, ["fit", str(data), "-o", str(tmp_path / "x.ckpt"), "--image-size", "big"])
    assert bad.exit_code == 2 and "'auto' or a whole number of pixels, got 'big'" in bad.output
    both = CliRunner().invoke(main, ["fit", str(data), "-o", str(tmp_path / "y"), "--image-size", "auto",
                                     "--per-category"])
    assert both.exit_code != 0 and "does not combine with --per-category" in both.output
