"""Any timm model as a backbone (``timm:<model>``): WideResNet-50, DINOv2 ViTs are out of scope of
``features_only`` and need a CNN-style model here. Weights come from ``weights=FILE`` when given;
otherwise timm's usual download runs, which happens only because the user named a hub backbone."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from ..errors import CostfilterError
from .base import Backbone, read_state_dict


def load_weights(net: torch.nn.Module, path: str, allow_partial: bool = False) -> None:
    """Load ``path`` into ``net``; every weight of ``net`` must be in the file with its shape
    (keys the file has beyond them, such as a classifier head that ``features_only`` drops, are
    ignored), or it is a one-line error naming the first missing and unexpected keys: silently
    keeping random weights is a wrong answer. ``allow_partial``: missing weights keep their
    (seeded) initial values, with a warning; a shape mismatch is refused either way."""
    state = read_state_dict(path)
    own = net.state_dict()
    wrong = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise CostfilterError(f"{path}: weights do not fit the network ({len(wrong)} of another shape; first: {k} is "
                              f"{tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the network)")
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing:
        text = (f"{path}: {len(missing)} of the network's {len(own)} weights are not in the file (first missing: "
                f"{missing[0]}; first unexpected: {unexpected[0] if unexpected else 'none'})")
        if not allow_partial:
            raise CostfilterError(text + "; is it the weights of this model? (--allow-partial-weights keeps the "
                                  "missing ones random)")
        warnings.warn(text + "; they stay randomly initialised (--allow-partial-weights)", stacklevel=2)


class TimmBackbone(Backbone):
    """A timm ``features_only`` model; ``layers`` are timm ``out_indices``."""

    def __init__(self, model: str, layers: Sequence[int], weights: str | None, allow_partial: bool = False):
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
            load_weights(self.net, weights, allow_partial)
        info = self.net.feature_info
        self.channels = tuple(info.channels())
        self.strides = tuple(info.reduction())
        self.freeze()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.net(x))


def build_timm(name: str, layers: Sequence[int], image_size: int, weights: str | None,
               allow_partial: bool = False) -> Backbone:
    """Builder for ``timm:<model>`` names."""
    return TimmBackbone(name.split(":", 1)[1], layers, weights, allow_partial)
