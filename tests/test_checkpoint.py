"""Checkpoints: no pickle, tamper-evident, atomic, never overwritten without force."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from costfilter import CostfilterError, Detector
from costfilter.checkpoint import load_checkpoint, save_checkpoint
from costfilter.decisions import Thresholds
from costfilter.errors import CheckpointError
from costfilter.state import DetectorState


def test_round_trip_of_tensors_config_and_state(tmp_path):
    path = tmp_path / "x.ckpt"
    t = {"a": torch.arange(6.0).view(2, 3)}
    digest = save_checkpoint(path, t, {"k": 1}, {"s": [1, 2]})
    tensors, config, state, d2 = load_checkpoint(path)
    assert torch.equal(tensors["a"], t["a"]) and config == {"k": 1} and state == {"s": [1, 2]} and d2 == digest
    assert not [p for p in tmp_path.iterdir() if p.name != "x.ckpt"]  # no temp file left


def test_modified_tensor_is_detected(tmp_path):
    path = tmp_path / "x.ckpt"
    save_checkpoint(path, {"a": torch.zeros(4)}, {}, {})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    save_file({"a": torch.ones(4)}, str(path), metadata=meta)  # same header, other numbers
    with pytest.raises(CheckpointError, match="content hash mismatch"):
        load_checkpoint(path)


def test_pickle_file_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.ckpt"
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Evil()}, path)  # a classic pickle payload
    with pytest.raises(CheckpointError, match="not a costfilter checkpoint"):
        Detector.load(path)
    assert not marker.exists()


def test_other_safetensors_file_and_missing_file(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="no 'costfilter-checkpoint' header"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_save_refuses_to_overwrite_without_force(fitted, tmp_path):
    det, _ = fitted
    path = tmp_path / "m.ckpt"
    path.write_text("user's precious file")
    with pytest.raises(CostfilterError, match="already exists"):
        det.save(path)
    assert path.read_text() == "user's precious file"
    det.save(path, force=True)
    tensors = load_file(str(path))
    assert set(tensors) == {"memory.bank", "memory.owners"}
    _, config, state, digest = load_checkpoint(path)
    assert config == det.config.to_dict()
    # The state is plain JSON that reads back as exactly the detector's typed state and thresholds.
    assert Thresholds.from_dict(state.pop("thresholds")) == det.thresholds
    assert DetectorState.from_dict(json.loads(json.dumps(state)), sha256=digest) == replace(det.state, sha256=digest)


def test_checkpoint_from_before_owners_and_padding_loads_with_its_old_behaviour(fitted, tmp_path):
    det, root = fitted
    path = tmp_path / "m.ckpt"
    det.save(path)
    tensors, config, state, _ = load_checkpoint(path)
    del tensors["memory.owners"], config["features"]["pad_neighbourhood"], config["memory"]["search_precision"]
    old = tmp_path / "old.ckpt"
    save_checkpoint(old, tensors, config, state)
    loaded = Detector.load(old, progress=False)
    assert loaded.config.features.pad_neighbourhood is False
    assert loaded.config.memory.search_precision == "float32"
    # Its answers are exactly those of the same bank with the old options written out (the
    # owners only serve leave-one-out calibration at fit time).
    explicit_config = dict(config, features=dict(config["features"], pad_neighbourhood=False),
                           memory=dict(config["memory"], search_precision="float32"))
    tensors, _, state, _ = load_checkpoint(path)
    save_checkpoint(tmp_path / "explicit.ckpt", tensors, explicit_config, state)
    explicit = Detector.load(tmp_path / "explicit.ckpt", progress=False)
    images = sorted((root / "alpha" / "test").rglob("*.png"))
    old_scores, explicit_scores = ([p.score for p in d.predict(images)] for d in (loaded, explicit))
    assert old_scores == explicit_scores
    assert old_scores != [p.score for p in det.predict(images)]  # padding changes them: the options matter
