"""The zero-shot text filter: a CLIP model loads from a local folder only (safetensors), gives a
per-patch "damaged" probability, and filtered patches leave the reference set (against brute force).

The CLIP here is a tiny randomly initialised one written by the test (no real weights can be had
offline): it tests the plumbing, not CLIP's judgement."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_clip, make_unlabelled, read_results

from costfilter import CostfilterError
from costfilter.cli import main
from costfilter.methods.zeroshot.model import mutual_patch_scores

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A Hugging Face CLIP folder: config, safetensors weights, a character-level BPE tokenizer."""
    return make_tiny_clip(tmp_path_factory.mktemp("clip"))


def brute_force_filtered(feats, fraction, allowed):
    n, c, h, w = feats.shape
    out = torch.zeros(n, h, w)
    for i in range(n):
        usable = [j for j in range(n) if j != i and allowed[j].any()]
        keep = max(1, round(fraction * len(usable)))
        for y in range(h):
            for x in range(w):
                per_image = []
                for j in usable:
                    refs = feats[j].reshape(c, -1).T[allowed[j].reshape(-1)]
                    per_image.append(float((refs - feats[i, :, y, x]).norm(dim=1).min()))
                out[i, y, x] = float(np.mean(sorted(per_image)[:keep]))
    return out


def test_filtered_mutual_scores_equal_brute_force():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(5, 6, 3, 4, generator=g)
    allowed = torch.rand(5, 3, 4, generator=g) > 0.4
    allowed[2] = False  # an image whose every patch was filtered drops out of the references
    got = mutual_patch_scores(feats, 0.5, allowed)
    assert torch.allclose(got, brute_force_filtered(feats, 0.5, allowed), atol=1e-4)
    # A filter that allows everything is the unfiltered score.
    assert torch.allclose(mutual_patch_scores(feats, 0.5, torch.ones(5, 3, 4, dtype=torch.bool)),
                          mutual_patch_scores(feats, 0.5))


def test_a_filtered_defect_no_longer_vouches_for_its_twin():
    base = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(1)).expand(6, -1, -1, -1).clone()
    base[4, :, 1, 1] += 8.0  # the same defect in two images of the batch
    base[5, :, 1, 1] += 8.0
    plain = mutual_patch_scores(base, fraction=0.2)
    allowed = torch.ones(6, 3, 3, dtype=torch.bool)
    allowed[4, 1, 1] = allowed[5, 1, 1] = False  # the text filter flags both
    filtered = mutual_patch_scores(base, fraction=0.2, references=allowed)
    assert plain[5, 1, 1] < 1e-3  # unfiltered, image 4's defect matches image 5's exactly
    assert filtered[5, 1, 1] > 5.0  # filtered, it is measured against normal patches


def test_clip_gives_patch_probabilities_offline(tiny_clip):
    from costfilter.methods.zeroshot.clip_text import ClipPatchText

    clip = ClipPatchText(tiny_clip, "tile")
    images = torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8)
    p = clip(images)
    assert p.shape == (3, 4, 4) and ((p >= 0) & (p <= 1)).all()
    assert torch.equal(p, clip(images))  # deterministic
    assert clip.text.shape == (2, 16)


def test_clip_folder_errors_are_one_line(tmp_path, tiny_clip):
    from costfilter.methods.zeroshot.clip_text import ClipPatchText

    with pytest.raises(CostfilterError, match="CLIP model folder not found"):
        ClipPatchText(tmp_path / "missing")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tiny_clip / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle would run code")
    with pytest.raises(CostfilterError, match="pickled weights are refused"):
        ClipPatchText(pickled)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CostfilterError, match="not a loadable CLIP model"):
        ClipPatchText(broken)
    # a weights file that leaves the text tower's last layer out: refused, not random
    import shutil

    from safetensors.torch import load_file, save_file

    cut = tmp_path / "cut"
    shutil.copytree(tiny_clip, cut)
    (weights,) = cut.glob("*.safetensors")
    state = load_file(weights)
    save_file({k: v for k, v in state.items() if not k.startswith("text_projection")}, weights,
              metadata={"format": "pt"})
    with pytest.raises(CostfilterError, match="CLIP weights do not fit its config.json .1 missing.*text_projection"):
        ClipPatchText(cut)


def test_zeroshot_cli_with_clip_filter(tmp_path, tiny_clip):
    folder = make_unlabelled(tmp_path / "unlabelled")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["predict", "--method", "zeroshot", "--clip", str(tiny_clip), "--clip-object",
                                  "tile", str(folder), "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    rows = read_results(out)
    assert len(rows) == 8 and rows["bad.png"]["score"] > max(v["score"] for k, v in rows.items() if k != "bad.png")
    record = json.loads((out / "run-record.json").read_text())
    assert record["config"]["zeroshot"]["clip_model"] == str(tiny_clip)


def test_restored_local_correlation_equals_a_per_head_reference(tiny_clip):
    """The last block with q·qᵀ / k·kᵀ attention, computed head by head and token by token."""
    from costfilter.methods.zeroshot.clip_text import ClipPatchText

    clip = ClipPatchText(tiny_clip, "tile", local_correlation=True)
    hidden = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(6))
    block = clip.model.vision_model.encoder.layers[-1]
    attn = block.self_attn
    x = block.layer_norm1(hidden)
    q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    heads, d = attn.num_heads, 32 // attn.num_heads
    mixed = torch.zeros(2, 5, 32)
    for b in range(2):
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            for t in range(5):
                wq = torch.softmax(torch.stack([q[b, t, sl] @ q[b, u, sl] for u in range(5)]) / d**0.5, 0)
                wk = torch.softmax(torch.stack([k[b, t, sl] @ k[b, u, sl] for u in range(5)]) / d**0.5, 0)
                mixed[b, t, sl] = sum(((wq[u] + wk[u]) / 2) * v[b, u, sl] for u in range(5))
    with torch.no_grad():
        expected = hidden + attn.out_proj(mixed)
        assert torch.allclose(clip.correlated_last_block(hidden), expected, atol=1e-5)
        images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
        restored, plain = clip(images), ClipPatchText(tiny_clip, "tile", local_correlation=False)(images)
    assert restored.shape == plain.shape == (2, 4, 4) and not torch.allclose(restored, plain)


def test_text_map_fusion(tiny_clip):
    """CLIP's text map joins the mutual-score map, each over its batch median; weight 0 leaves
    the map to the filtered mutual scores alone."""
    from costfilter import DetectorConfig
    from costfilter.methods.zeroshot.model import ZeroShotModel

    cfg = DetectorConfig(method="zeroshot")
    cfg.features.image_size = 64
    cfg.zeroshot.clip_model = str(tiny_clip)
    images = torch.randint(0, 255, (4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))
    model = ZeroShotModel(cfg).eval()
    visual = torch.rand(4, 8, 8) + 0.5
    text = torch.rand(4, 8, 8)
    fused = model.fuse(visual, text)
    assert torch.allclose(fused, 0.5 * visual / visual.median() + 0.5 * text / text.median())
    model.clip_map_weight = 0.0
    assert torch.equal(model.fuse(visual, text), visual) and torch.equal(model.fuse(visual, None), visual)
    with torch.inference_mode():
        grid = model.features.grid
        text_map = model.damaged(images, (grid, grid))
        unfused = model.scorer(model.patch_scores(model.features.layer_maps(images), text_map <= 0.5))[0]
        assert torch.allclose(model(images)[0], unfused)
