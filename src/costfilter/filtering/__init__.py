"""The cost volume filtering network (a plain ``nn.Module``)."""

from .unet3d import CostFilterNet

__all__ = ["CostFilterNet"]
