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
