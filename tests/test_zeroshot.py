"""Zero-shot batch mutual scoring: against a brute-force reference, and end to end on a folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_mvtec, make_unlabelled, read_results

from costfilter.cli import main
from costfilter.methods.zeroshot.model import mutual_patch_scores, robust_outlier_threshold


def brute_force_mutual(feats: torch.Tensor, fraction: float) -> torch.Tensor:
    n, c, h, w = feats.shape
    out = torch.zeros(n, h, w)
    keep = max(1, round(fraction * (n - 1)))
    for i in range(n):
        for y in range(h):
            for x in range(w):
                per_image = []
                for j in range(n):
                    if j != i:
                        refs = feats[j].reshape(c, -1).T
                        per_image.append(float((refs - feats[i, :, y, x]).norm(dim=1).min()))
                out[i, y, x] = float(np.mean(sorted(per_image)[:keep]))
    return out


@pytest.mark.parametrize("fraction", [0.01, 0.5, 1.0])
def test_mutual_scores_equal_brute_force(fraction):
    feats = torch.randn(5, 6, 3, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(mutual_patch_scores(feats, fraction), brute_force_mutual(feats, fraction), atol=1e-4)


def test_robust_aggregation_ignores_an_anomalous_reference():
    base = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    normals = base + 0.01 * torch.randn(5, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    odd = base + 10.0  # an anomalous image in the batch
    scores = mutual_patch_scores(torch.cat([normals, odd]), fraction=0.5)
    assert scores[:5].max() < 0.2 and scores[5].min() > 5.0  # normals are not poisoned by it


def test_outlier_threshold():
    s = torch.tensor([1.0, 1.1, 0.9, 1.05, 0.95, 5.0])
    t = robust_outlier_threshold(s, 3.0)
    # by hand: torch's median of an even count is the lower middle value; median 1.0, absolute
    # deviations [0.1, 0.05, 0, 0.05, 0.1, 4.0] → MAD 0.05; limit 1.0 + 3 · 1.4826 · 0.05
    assert t == pytest.approx(1.0 + 3 * 1.4826 * 0.05, abs=1e-6)


def test_zeroshot_predict_on_an_unlabelled_folder_and_test(tmp_path):
    folder = make_unlabelled(tmp_path / "unlabelled")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["predict", "--method", "zeroshot", str(folder), "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    rows = read_results(out)
    assert rows["bad.png"]["decision"] == "reject"
    assert rows["bad.png"]["score"] > max(v["score"] for k, v in rows.items() if k != "bad.png")
    root = make_mvtec(tmp_path / "m", n_good=4, n_bad=3)
    r = CliRunner().invoke(main, ["test", "--method", "zeroshot", str(root), "-q"])
    assert r.exit_code == 0, r.output
    assert "| alpha |" in r.output

    from costfilter import CostfilterError, Detector, DetectorConfig

    with pytest.raises(CostfilterError, match="needs no fit"):
        Detector(DetectorConfig(method="zeroshot"), progress=False).fit(root)


def test_mutual_scores_in_reference_chunks_equal_brute_force(monkeypatch):
    from costfilter.methods.zeroshot import model as zeroshot

    monkeypatch.setattr(zeroshot, "REFERENCE_CHUNK", 2)  # 6 images: three chunks per query, the last one short
    feats = torch.randn(7, 5, 3, 3, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(mutual_patch_scores(feats, 0.5), brute_force_mutual(feats, 0.5), atol=1e-4)


def brute_force_rescore(scores, descriptors, ks):
    d = [np.asarray(x, dtype=np.float64) / np.linalg.norm(x) for x in descriptors.numpy()]
    out = np.zeros(len(scores))
    for k in ks:
        for i in range(len(scores)):
            sims = [1.0 if j == i else max(0.0, float(d[i] @ d[j])) for j in range(len(scores))]
            top = sorted(range(len(scores)), key=lambda j: -sims[j])[:k]
            out[i] += sum(sims[j] * float(scores[j]) for j in top) / sum(sims[j] for j in top) / len(ks)
    return out


def test_rscin_rescoring_equals_brute_force_and_k1_keeps_scores():
    from costfilter.methods.zeroshot.model import rescore

    g = torch.Generator().manual_seed(4)
    scores, desc = torch.rand(6, generator=g), torch.rand(6, 5, generator=g)
    expected = brute_force_rescore(scores, desc, (1, 2, 3))
    assert np.allclose(rescore(scores, desc, (1, 2, 3)).numpy(), expected, atol=1e-5)
    assert torch.allclose(rescore(scores, desc, (1,)), scores)
    assert torch.equal(rescore(scores, desc, ()), scores)
    # an image whose look-alikes all score low is pulled down, one among high scorers up
    twins = torch.tensor([[1.0, 0.0], [0.99, 0.01], [0.0, 1.0], [0.01, 0.99]])
    smoothed = rescore(torch.tensor([0.0, 1.0, 5.0, 5.0]), twins, (2,))
    assert 0.4 < smoothed[0] < 0.6 and 0.4 < smoothed[1] < 0.6 and torch.allclose(smoothed[2:], torch.tensor(5.0))


def test_musc_pieces_switch_off_to_the_earlier_scoring():
    """degrees (3,), concatenated layers, top-1 % and no RsCIN is the single-degree scoring it replaced."""
    from costfilter.config import DetectorConfig
    from costfilter.methods.zeroshot.model import ZeroShotModel

    cfg = DetectorConfig(method="zeroshot")
    cfg.features.image_size = 64
    z = cfg.zeroshot
    z.degrees, z.per_layer, z.image_score, z.rescore_k = (3,), False, "top_percent", ()
    images = torch.randint(0, 255, (4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    model = ZeroShotModel(cfg).eval()
    with torch.inference_mode():
        maps, scores = model(images)
        expected = model.scorer(mutual_patch_scores(model.features(images), z.fraction))
    assert torch.allclose(maps, expected[0]) and torch.allclose(scores, expected[1])
    cfg.zeroshot = type(z)()  # the defaults: every MuSc piece on
    cfg.features.image_size = 64
    model = ZeroShotModel(cfg).eval()
    with torch.inference_mode():
        maps, scores = model(images)
    assert maps.shape == (4, 64, 64) and scores.shape == (4,)
    # image score: the map's maximum, re-scored over look-alike images
    from costfilter.methods.zeroshot.model import rescore

    layers = model.features.layer_maps(images)
    assert torch.allclose(scores, rescore(maps.flatten(1).amax(1), layers[-1].mean(dim=(2, 3)), (1, 2, 3)), atol=1e-5)


@pytest.mark.parametrize(("field", "value"), [("degrees", (2,)), ("degrees", ()), ("rescore_k", (0,)),
                                              ("image_score", "mean")])
def test_zeroshot_config_refuses_bad_values(field, value):
    from costfilter import CostfilterError, DetectorConfig

    cfg = DetectorConfig(method="zeroshot")
    setattr(cfg.zeroshot, field, value)
    with pytest.raises(CostfilterError, match="zeroshot"):
        cfg.validate()
