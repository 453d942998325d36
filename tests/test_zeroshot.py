"""Zero-shot batch mutual scoring: against a brute-force reference, and end to end on a folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_mvtec, make_unlabelled, read_results

from costfilter.cli import main
from costfilter.methods.zeroshot import mutual_patch_scores, robust_outlier_threshold


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
    assert 1.1 < t < 5.0


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
