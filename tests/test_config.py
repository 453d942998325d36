from __future__ import annotations

import pytest

from costfilter.config import DetectorConfig
from costfilter.errors import CostfilterError


def test_round_trips_through_json_and_yaml(tmp_path):
    cfg = DetectorConfig(seed=7)
    cfg.features.layers = (2, 4)
    cfg.memory.coreset_ratio = 0.05
    (tmp_path / "c.json").write_text(cfg.to_json())
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    for name in ("c.json", "c.yaml"):
        assert DetectorConfig.from_file(tmp_path / name) == cfg


def test_partial_file_takes_defaults_and_unknown_keys_fail(tmp_path):
    (tmp_path / "p.yaml").write_text("memory:\n  coreset_ratio: 0.2\n")
    cfg = DetectorConfig.from_file(tmp_path / "p.yaml")
    assert cfg.memory.coreset_ratio == 0.2 and cfg.features == DetectorConfig().features
    (tmp_path / "bad.yaml").write_text("memory:\n  coreset_ration: 0.2\n")
    with pytest.raises(CostfilterError, match="unknown option.*coreset_ration"):
        DetectorConfig.from_file(tmp_path / "bad.yaml")


def test_saved_configs_without_newer_options_keep_their_old_behaviour():
    saved = DetectorConfig().to_dict()
    del saved["features"]["pad_neighbourhood"], saved["memory"]["search_precision"]
    old = DetectorConfig.from_saved(saved)
    assert old.features.pad_neighbourhood is False and old.memory.search_precision == "float32"
    # A user's partial file is not a saved model: missing options take today's defaults.
    fresh = DetectorConfig.from_dict({"features": {"image_size": 128}})
    assert fresh.features.pad_neighbourhood is True and fresh.memory.search_precision == "auto"
