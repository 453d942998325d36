"""Every loader on generated trees in the exact public layouts, image modes, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_btad, make_elpv, make_mvtec, make_visa, save, texture
from PIL import Image

from costfilter.data import load_dataset, read_image, read_mask, split_of
from costfilter.errors import DataError


def counts(samples):
    return (len(split_of(samples, "train")), sum(s.label == 0 for s in split_of(samples, "test")),
            sum(s.label == 1 for s in samples))


def test_mvtec_root_of_categories_and_single_category(tmp_path):
    root = make_mvtec(tmp_path / "m", categories=("alpha", "beta"), n_train=4, n_good=2, n_bad=3)
    samples = load_dataset(root, "mvtec")
    assert counts(samples) == (8, 4, 6)
    assert {s.category for s in samples} == {"alpha", "beta"}
    bad = [s for s in samples if s.label == 1]
    assert all(s.mask is not None and s.mask.name == f"{s.path.stem}_mask.png" for s in bad)
    assert all(s.defect == "spot" for s in bad)
    one = load_dataset(root / "beta", "mvtec")
    assert {s.category for s in one} == {"beta"} and counts(one) == (4, 2, 3)
    assert {s.category for s in load_dataset(root, "mpdd", ["alpha"])} == {"alpha"}


def test_btad_layout_with_bmp_images_and_png_masks(tmp_path):
    samples = load_dataset(make_btad(tmp_path / "btad"), "btad")
    assert counts(samples) == (6, 2, 2)
    bad = [s for s in samples if s.label == 1]
    assert all(s.mask.suffix == ".png" and s.mask.stem == s.path.stem for s in bad)
    assert all(s.path.suffix == ".bmp" for s in samples)


def test_visa_split_csv_and_binary_masks(tmp_path):
    root = make_visa(tmp_path / "visa")
    samples = load_dataset(root, "visa")
    assert counts(samples) == (6, 4, 4)
    only = load_dataset(root, "visa", ["pcb1"])
    assert {s.category for s in only} == {"pcb1"}
    mask = read_mask([s for s in only if s.label == 1][0].mask)
    assert set(np.unique(mask)) == {0, 1}  # VisA masks are 0/1: binarised later with > 0


def test_folder_normal_only_and_with_defects(tmp_path):
    rng = np.random.default_rng(0)
    plain = tmp_path / "plain"
    for i in range(3):
        save(texture(rng), plain / f"{i}.png")
    s = load_dataset(plain, "folder")
    assert counts(s) == (3, 3, 0)
    tree = tmp_path / "tree"
    for i in range(2):
        save(texture(rng), tree / "good" / f"g{i}.png")
        save(texture(rng), tree / "scratch" / f"s{i}.png")
        save(np.zeros((48, 48), np.uint8), tree / "masks" / "scratch" / f"s{i}_mask.png")
    s = load_dataset(tree, "folder")
    assert counts(s) == (2, 2, 2)
    assert all(x.mask is not None for x in s if x.label == 1)


def test_elpv_labels_file_split(tmp_path):
    root = make_elpv(tmp_path / "elpv")
    s = load_dataset(root, "elpv")
    # 20 normal cells → int(0.7 · 20) = 14 train; defective (p = 1) all test; p = 1/3, 2/3 left out.
    assert counts(s) == (14, 6, 6)
    assert {x.category for x in s} == {"mono", "poly"}
    assert counts(load_dataset(root, "elpv", ["mono"]))[2] == 3


def test_image_modes_are_normalised_to_rgb(tmp_path):
    rng = np.random.default_rng(0)
    rgb = texture(rng)
    gray = save(rgb[..., 0], tmp_path / "gray.png")
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(rgba)
    sixteen = tmp_path / "16.png"
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(sixteen)
    for p in (gray, rgba, sixteen):
        arr = read_image(p)
        assert arr.shape == (48, 48, 3) and arr.dtype == np.uint8
    assert np.array_equal(read_image(sixteen)[..., 0], rgb[..., 0])  # 16-bit scaled back exactly
    assert np.array_equal(read_image(rgba), rgb)


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :10] = 255  # bright left band
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=95)
    out = read_image(path)
    assert out.shape[:2] == (40, 20)
    assert out[:10].mean() > 200 and out[-10:].mean() < 50  # the band is now on top


@pytest.mark.parametrize("case", ["missing_root", "empty_train", "bad_image", "mask_size", "missing_mask"])
def test_bad_input_is_one_line_error_naming_the_file(tmp_path, case):
    root = make_mvtec(tmp_path / "m", n_train=2, n_good=1, n_bad=1)
    cat = root / "alpha"
    expected = {"missing_root": tmp_path / "nope", "empty_train": cat / "train" / "good",
                "bad_image": cat / "train" / "good" / "broken.png",
                "mask_size": cat / "ground_truth" / "spot" / "000_mask.png",
                "missing_mask": cat / "test" / "spot" / "000.png"}[case]
    if case == "empty_train":
        for p in (cat / "train" / "good").iterdir():
            p.unlink()
    elif case == "bad_image":
        expected.write_bytes(b"this is not a png")
    elif case == "mask_size":
        save(np.zeros((10, 10), np.uint8), expected)
    elif case == "missing_mask":
        (cat / "ground_truth" / "spot" / "000_mask.png").unlink()
    with pytest.raises(DataError) as err:
        samples = load_dataset(expected if case == "missing_root" else root, "mvtec")
        for s in samples:  # decoding errors surface when images are read
            read_mask(s.mask, read_image(s.path).shape[:2]) if s.mask else read_image(s.path)
    msg = str(err.value)
    assert str(expected) in msg and "\n" not in msg


def test_unknown_category_and_format(tmp_path):
    root = make_mvtec(tmp_path / "m", n_train=1, n_good=1, n_bad=1)
    with pytest.raises(DataError, match="category 'zeta' not found"):
        load_dataset(root, "mvtec", ["zeta"])
    with pytest.raises(DataError, match="unknown dataset format"):
        load_dataset(root, "coco")
    with pytest.raises(DataError, match="VisA split file not found"):
        load_dataset(root, "visa")
