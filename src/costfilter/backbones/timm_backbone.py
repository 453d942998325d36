"""Any timm model as a backbone (``timm:<model>``): WideResNet-50, DINOv2 ViTs are out of scope of
``features_only`` and need a CNN-style model here. Weights come from ``weights=FILE`` when given;
otherwise timm's usual download runs, which happens only because the user named a hub backbone."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import CostfilterError
from .base import Backbone, read_state_dict


def load_weights(net: torch.nn.Module, path: str) -> None:
    """Load ``path`` into ``net``; every weight of ``net`` must be in the file with its shape
    (keys the file has beyond them, such as a classifier head that ``features_only`` drops, are
    ignored), or it is a one-line error: silently keeping random weights is a wrong answer."""
    state = read_state_dict(path)
    try:
        missing, _unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape mismatch
        raise CostfilterError(f"{path}: weights do not fit the network ({str(exc).splitlines()[-1].strip()})") from None
    if missing:
        raise CostfilterError(f"{path}: {len(missing)} of the network's {len(net.state_dict())} weights are not in "
                              f"the file (e.g. {', '.join(missing[:3])}); is it the weights of this model?")


class TimmBackbone(Backbone):
    """A timm ``features_only`` model; ``layers`` are timm ``out_indices``."""

    def __init__(self, model: str, layers: Sequence[int], weights: str | None):
        super().__init__()
        try:
            import timm
        except ImportError:
            raise CostfilterError("timm backbones need the timm extra: pip install 'costfilter[timm]'") from None
        try:
            self.net = timm.create_model(model, pretrained=weights is None, features_only=True, out_indices=tuple(layers))
        except Exception as exc:  # timm raises many kinds for unknown names / failed downloads
            raise CostfilterError(f"timm:{model}: cannot build ({str(exc).splitlines()[0]})") from None
        if weights:
            load_weights(self.net, weights)
        info = self.net.feature_info
        self.channels = tuple(info.channels())
        self.strides = tuple(info.reduction())
        self.freeze()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.net(x))


def build_timm(name: str, layers: Sequence[int], image_size: int, weights: str | None) -> Backbone:
    """Builder for ``timm:<model>`` names."""
    return TimmBackbone(name.split(":", 1)[1], layers, weights)
