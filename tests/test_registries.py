"""The torch-free names agree with their registries, and a new method is one module plus one
registry line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import make_mvtec, small_config

from costfilter import names
from costfilter.api import Detector
from costfilter.backbones import BACKBONES
from costfilter.data import FORMATS
from costfilter.methods import REGISTRY, get_method


def test_names_match_the_registries():
    assert names.FORMATS == tuple(FORMATS)
    assert names.BACKBONES == tuple(BACKBONES)
    assert names.METHODS == tuple(REGISTRY)
    for name in REGISTRY:
        method = get_method(name)
        assert method.name == name
    assert [m for m in names.METHODS if get_method(m).needs_fit] == ["memory", "costfilter", "dfm"]
    assert [m for m in names.METHODS if not get_method(m).exportable] == ["zeroshot"]


def test_cli_help_loads_no_torch():
    code = "import sys; from costfilter.cli import main; assert 'torch' not in sys.modules, 'torch was imported'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


def test_a_new_method_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    monkeypatch.setitem(REGISTRY, "centroid", "centroid_method:METHOD")  # the one registry line
    root = make_mvtec(tmp_path / "m", n_train=6)
    cfg = small_config()
    cfg.method = "centroid"
    det = Detector(cfg, progress=False).fit(root)
    assert det.thresholds.source == "fit"  # it scores no image leave-one-out, so it says so
    ev = det.evaluate(root)
    assert ev.per_category["alpha"]["image_auroc"] > 0.9  # a red square is far from the mean stripe patch
    det.save(tmp_path / "c.ckpt")
    again = Detector.load(tmp_path / "c.ckpt", progress=False)
    image = next((root / "alpha" / "test" / "spot").glob("*.png"))
    assert np.isclose(again.predict(image)[0].score, det.predict(image)[0].score)


def test_unknown_method_is_a_one_line_error():
    from costfilter.errors import CostfilterError

    cfg = small_config()
    cfg.method = "nope"
    with pytest.raises(CostfilterError, match="unknown method 'nope'; choose one of memory"):
        Detector(cfg)
