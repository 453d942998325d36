"""What every backbone provides."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CostfilterError


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
        raise CostfilterError(f"{type(self).__name__}: training the backbone is supported for EfficientNet-Lite only")


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A weights file (``.safetensors``, or a tensors-only torch file) as ``name → tensor``;
    a ``{"state_dict": …}`` or ``{"model": …}`` wrapper is opened."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load and safetensors raise many kinds for a bad file
        raise CostfilterError(f"{path}: cannot load weights ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                              ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CostfilterError(f"{path}: holds no weights (expected a mapping of parameter names to tensors)")
    return state
