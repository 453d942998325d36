"""Pose-varied development sets (``benchmarks/pose_sets.py``): each image and its mask moved by
one seeded transform, the layout kept, the source only read."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from conftest import make_mvtec
from PIL import Image

from benchmarks.pose_sets import make_pose_set
from costfilter.data import load_dataset
from costfilter.errors import CostfilterError


def _files(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_image_and_its_mask_get_the_same_seeded_pose(tmp_path):
    src = make_mvtec(tmp_path / "data", categories=("alpha",), n_bad=4) / "alpha"
    before = _files(src)
    poses = make_pose_set(src, tmp_path / "posed", seed=3)
    assert _files(src) == before  # the source is only read
    out = tmp_path / "posed"
    images = {k for k in before if not k.startswith("ground_truth/")}
    assert set(poses) == images and set(_files(out)) == set(before) | {"poses.json"}
    assert len({round(p["angle"], 3) for p in poses.values()}) == len(poses)  # one pose per file
    # the mask moved with its defect: the planted red square is red inside the new mask only
    for key in (k for k in poses if k.startswith("test/spot/")):
        img = np.asarray(Image.open(out / key).convert("RGB")).astype(int)
        mask = np.asarray(Image.open(out / "ground_truth" / "spot" / key.split("/")[-1].replace(".png", "_mask.png")))
        assert set(np.unique(mask)) <= {0, 255} and (mask > 0).sum() > 20
        red = img[..., 0] - img[..., 1]
        assert red[mask > 0].mean() > red[mask == 0].mean() + 100, key
    # the copy reads as a dataset of the same size, masks and all
    samples = load_dataset(out, "mvtec")
    assert len(samples) == len(images) and sum(s.mask is not None for s in samples) == 4
    # the same seed gives the same bytes; no rotation, flip or shift gives the source back
    make_pose_set(src, tmp_path / "again", seed=3)
    assert _files(tmp_path / "again") == _files(out)
    make_pose_set(src, tmp_path / "still", max_rotation=0, flip=False, shift=0)
    for key in images:
        assert np.array_equal(np.asarray(Image.open(src / key)), np.asarray(Image.open(tmp_path / "still" / key)))


def test_the_output_may_not_lie_in_the_source_or_overwrite_a_folder(tmp_path):
    src = make_mvtec(tmp_path / "data", categories=("alpha",)) / "alpha"
    with pytest.raises(CostfilterError, match="outside the source"):
        make_pose_set(src, src / "posed")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    with pytest.raises(CostfilterError, match="not empty"):
        make_pose_set(src, tmp_path / "busy")
    assert (tmp_path / "busy" / "x.txt").read_text() == "mine"
