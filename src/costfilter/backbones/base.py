"""What every backbone provides."""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """A frozen feature extractor.

    ``forward(x)`` takes ``(B, 3, H, W)`` ImageNet-normalised images and returns one feature
    map per requested layer, ``(B, C_i, H / s_i, W / s_i)``. ``channels`` and ``strides`` describe them.
    """

    channels: tuple[int, ...]
    strides: tuple[int, ...]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def freeze(self) -> Backbone:
        """Eval mode, no gradients: the backbone is never trained."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def unfreeze_tapped_stages(self) -> list[nn.Parameter]:
        """Let the stages that produce the tapped layers train (the earlier ones stay frozen);
        returns their parameters. Backbones that cannot refuse with a one-line error."""
        from ..errors import CostfilterError

        raise CostfilterError(f"{type(self).__name__}: training the backbone is supported for EfficientNet-Lite only")
