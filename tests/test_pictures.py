"""Pictures: jet colours by lookup equal matplotlib's; the service draws a record's overlay and
thumbnail on first request from what it stored, the same picture its upload answer inlined."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

pytest.importorskip("fastapi")

from conftest import planted_defect_png
from fastapi.testclient import TestClient

from costfilter.result_files import render
from costfilter.serve import HistoryStore, create_app
from costfilter.serve.pictures import thumbnail
from costfilter.viz import heat_colours


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threshold", [0.0, 0.37, 1.0])
def test_heat_colours_equal_matplotlib_colormap(dtype, threshold):
    rng = np.random.default_rng(1)
    amap = (rng.random((120, 90)) * 3 - 0.5).astype(dtype)
    if threshold > 0:  # without one the map's max sets the scale, so it must be finite
        amap[0, :3] = [np.nan, np.inf, -np.inf]  # matplotlib's bad, over and under
    scale = 2 * threshold if threshold > 0 else float(amap.max())
    amap[1, 0] = scale  # exactly the top of the scale
    jet = colormaps["jet"]
    ref = (jet(np.clip(amap / scale, 0, 1))[..., :3] * 255).astype(np.uint8)
    assert len(np.unique(ref.reshape(-1, 3), axis=0)) > 200  # most of the 256 levels are hit
    assert np.array_equal(heat_colours(amap, threshold), ref)


def _big_defect_png() -> tuple[np.ndarray, bytes]:
    """A planted defect at 3× the fixture model's 64 px, so the map is kept at the model's size."""
    img = Image.open(io.BytesIO(planted_defect_png(3))).convert("RGB")
    img = img.resize((img.width * 3, img.height * 3), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return np.asarray(img), buf.getvalue()


def test_served_overlay_is_the_cli_overlay_up_to_one_jet_level(fitted, tmp_path):
    """The service draws from the 8-bit map it stored (level 128 = threshold, kept at the model's
    64 px); the CLI from the float map. Same size, outline, boxes and label; colours within one
    jet level (a few where the map saturates: there the stored map was clipped before it was
    upsampled)."""
    det, _ = fitted
    image, data = _big_defect_png()
    regions, cli, mask, _ = render(det.predict([image])[0], image, det.thresholds.pixel)
    assert regions, "the planted defect must give a region for this test to mean anything"
    store = HistoryStore(tmp_path / "store")
    with TestClient(create_app(det, store, model_name="m.ckpt", allowed_hosts=["testserver"])) as c:
        r = c.post("/predict", files={"file": ("big.png", data, "image/png")}).json()
        kept = Image.open(store.file_path(r["id"], "map.png"))
        served = np.asarray(Image.open(io.BytesIO(c.get(r["links"]["overlay"]).content)))
    assert kept.size == (64, 64) and served.shape == cli.shape == (*image.shape[:2], 3)
    assert np.array_equal(np.asarray(Image.open(store.file_path(r["id"], "mask.png"))), mask)
    diff = np.abs(served.astype(int) - cli.astype(int))
    assert np.array_equal(served == 255, cli == 255)  # outlines and label text where they were
    # one jet level is at most ~4.5 per channel, ~2 after blending
    assert diff.max() <= 12 and (diff > 2).mean() < 0.01, (diff.max(), (diff > 2).mean())


def test_service_draws_overlay_and_thumb_on_first_request_and_keeps_them(fitted, tmp_path):
    det, _ = fitted
    store = HistoryStore(tmp_path / "store")
    with TestClient(create_app(det, store, model_name="m.ckpt", allowed_hosts=["testserver"])) as c:
        r = c.post("/predict", params={"inline": "true"},
                   files={"file": ("bad.png", planted_defect_png(3), "image/png")}).json()
        folder = store.file_path(r["id"], "")
        assert sorted(p.name for p in folder.iterdir()) == ["image.png", "map.png", "mask.png"]  # nothing drawn yet
        first = c.get(r["links"]["overlay"])
        assert first.status_code == 200 and first.headers["content-type"] == "image/png"
        assert first.content == base64.b64decode(r["overlay_png_base64"])  # the inlined picture, drawn again
        assert (folder / "overlay.png").read_bytes() == first.content and (folder / "thumb.png").is_file()
        (folder / "image.png").unlink()  # kept: no longer drawn from the upload
        assert c.get(r["links"]["overlay"]).content == first.content
        thumb = np.asarray(Image.open(io.BytesIO(c.get(r["links"]["thumb"]).content)))
        assert np.array_equal(thumb, thumbnail(np.asarray(Image.open(io.BytesIO(first.content)))))
        assert c.get(f"/results/{r['id']}/nonsense").status_code == 404


def test_a_drawn_picture_whose_inputs_are_gone_is_a_404_naming_the_file(fitted, tmp_path):
    det, _ = fitted
    store = HistoryStore(tmp_path / "store")
    with TestClient(create_app(det, store, model_name="m.ckpt", allowed_hosts=["testserver"])) as c:
        r = c.post("/predict", files={"file": ("bad.png", planted_defect_png(3), "image/png")}).json()
        store.file_path(r["id"], "map.png").unlink()
        got = c.get(r["links"]["overlay"])
        assert got.status_code == 404 and "'map' file" in got.json()["detail"]


def _regions_by_brute_force(amap, size, hw, t):
    """The reference: the whole map resized by Pillow, labelled whole (scipy), boxes and values."""
    from scipy import ndimage

    from costfilter.viz import resize_map

    full = resize_map(amap, hw)
    labels, n = ndimage.label(full > t, structure=np.ones((3, 3), bool))
    out = []
    for i in range(1, n + 1):
        ys, xs = np.nonzero(labels == i)
        vals = full[ys, xs]
        sy, sx = size[0] / hw[0], size[1] / hw[1]
        out.append(((int(xs.min() * sx), int(ys.min() * sy), int(np.ceil((xs.max() + 1) * sx)) - 1,
                     int(np.ceil((ys.max() + 1) * sy)) - 1), round(len(ys) * sy * sx), float(vals.max()),
                    float(vals.mean())))
    return full, sorted(out, key=lambda r: -r[2])


@pytest.mark.parametrize("seed", range(6))
def test_the_windowed_map_equals_pillows_whole_resize_bit_for_bit(seed):
    """Regions and masks are found in the window where the enlarged map can exceed the
    threshold (costfilter.viz.above_window); the window's values are Pillow's whole resize
    exactly, NaN and inf included, so the answers are those of resizing everything."""
    from costfilter.viz import above_window, resize_map, resize_map_window

    rng = np.random.default_rng(seed)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 80, 2))
        hw = (h + int(rng.integers(0, 300)) * int(rng.random() > 0.2), w + int(rng.integers(0, 300)))
        amap = (rng.random((h, w)) * 2).astype(np.float32)
        amap[rng.integers(0, h), rng.integers(0, w)] = [np.nan, np.inf, 5.0][int(rng.integers(0, 3))]
        full = resize_map(amap, hw)
        r0, c0 = int(rng.integers(0, hw[0])), int(rng.integers(0, hw[1]))
        r1, c1 = int(rng.integers(r0 + 1, hw[0] + 1)), int(rng.integers(c0 + 1, hw[1] + 1))
        assert np.array_equal(resize_map_window(amap, hw, (r0, r1), (c0, c1)), full[r0:r1, c0:c1], equal_nan=True)
        for t in (1.5, 1.99, 10.0):
            window = above_window(amap, hw, t)
            if window is None:
                assert not (full > t).any()
                continue
            (top, left), vals = window
            assert np.array_equal(vals, full[top:top + vals.shape[0], left:left + vals.shape[1]], equal_nan=True)
            inside = np.zeros(hw, bool)
            inside[top:top + vals.shape[0], left:left + vals.shape[1]] = True
            assert not (full[~inside] > t).any()  # nothing above the threshold outside the window
    with pytest.raises(ValueError, match="shrinks"):
        resize_map_window(np.zeros((8, 8), np.float32), (4, 16), (0, 1), (0, 1))


@pytest.mark.parametrize("source", [(512, 512), (300, 700), (64, 64), (2000, 900), (40, 50)])
def test_regions_and_mask_equal_the_brute_force_over_the_whole_resized_map(source):
    from costfilter.result_files import analyse
    from costfilter.results import Prediction

    rng = np.random.default_rng(sum(source))
    amap = rng.random((64, 64)).astype(np.float32) * 0.5
    amap[10:14, 20:30] += 1.0
    amap[40, 50] = 2.0
    amap[50:60, 5:7] += 0.8
    for t in (0.9, 1.2, 3.0):
        pred = Prediction("x.png", 1.0, "reject", amap, source)
        drawn = analyse(pred, t)
        full, expected = _regions_by_brute_force(amap, source, drawn.hw, t)
        got = [(r.box, r.area_px, r.peak, r.mean) for r in drawn.regions]
        assert [g[:2] for g in got] == [e[:2] for e in expected]
        np.testing.assert_allclose([g[2:] for g in got], [e[2:] for e in expected], rtol=1e-6)
        assert np.array_equal(drawn.mask, (full > t).astype(np.uint8) * 255)
        assert np.array_equal(drawn.amap, full)
        assert [(r.box, r.area_px) for r in pred.regions(t, at=drawn.hw)] == [e[:2] for e in expected]
        if t == 3.0:
            assert drawn.regions == [] and not drawn.mask.any()


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (37, 53), (256, 256)])
def test_grey_pngs_decode_to_the_same_array_in_pillow(shape):
    """The hand-written grey PNG (a mask's and a map's on every request) is a valid PNG whose
    pixels Pillow's decoder reads back exactly: noise (every byte, every Up difference wrapping
    modulo 256), a smooth map and a 0/255 mask; anything but uint8 is refused."""
    from costfilter.viz import encode_png

    rng = np.random.default_rng(sum(shape))
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    arrays = [rng.integers(0, 256, shape, dtype=np.uint8), np.full(shape, 255, np.uint8),
              ((np.sin(yy / 9.0) + np.cos(xx / 7.0) + 2) * 63).astype(np.uint8),
              (rng.random(shape) > 0.9).astype(np.uint8) * 255]
    for a in arrays:
        data = encode_png(a)
        Image.open(io.BytesIO(data)).verify()  # chunk CRCs and layout
        back = Image.open(io.BytesIO(data))
        assert back.mode == "L" and back.size == (w, h) and back.format == "PNG"
        assert np.array_equal(np.asarray(back), a)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(a[:, ::-1])))), a[:, ::-1])  # strided
    with pytest.raises(TypeError, match="uint8"):
        encode_png(np.zeros(shape, bool))
