"""Images → multi-layer patch features ``(B, C, h, w)``, with ImageNet normalisation inside."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone, build_backbone
from .compute import CPU, Compute
from .config import FeatureConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureExtractor(nn.Module):
    """Frozen backbone + local neighbourhood aggregation + resampling to the finest tapped grid.

    ``forward`` takes ``(B, 3, S, S)`` images, uint8 (0–255) or float (0–1), and returns
    ``(B, C, h, w)`` with ``C = sum(backbone.channels)`` and ``h = w = S / min(strides)``.

    Images move to the module's device on the way in; the backbone runs at ``compute``'s
    precision and its maps come out float32 (set by :meth:`costfilter.api.Detector.to`).
    """

    def __init__(self, config: FeatureConfig, backbone: Backbone | None = None):
        super().__init__()
        self.config = config
        self.backbone = backbone or build_backbone(config.backbone, config.layers, config.image_size, config.weights,
                                                      config.layer_groups, config.allow_partial_weights)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.channels = sum(self.backbone.channels)
        self.stride = min(self.backbone.strides)
        self.grid = config.image_size // self.stride
        self.compute: Compute = CPU

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float images → ImageNet-normalised float."""
        x = images.to(self.mean.device, non_blocking=True).float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        return (x - self.mean) / self.std

    def layer_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's tapped maps as they are: ``[(B, C_l, h_l, w_l)]``, one per layer."""
        x = self.normalise(images)
        if self.compute.dtype is None:
            return self.backbone(x)
        with self.compute.autocast():
            maps = self.backbone(x)
        return [m.float() for m in maps]

    def aggregate(self, m: torch.Tensor, k: int, resample: bool = True) -> torch.Tensor:
        """One layer's ``(B, C_l, h_l, w_l)`` map → ``(B, C_l, h, w)``: each patch averaged over its
        k×k neighbourhood, then (``resample``) resampled to the finest tapped grid."""
        if k > 1:
            # Each patch sees its k×k neighbourhood: robust to small shifts (PatchCore's aggregation).
            m = F.avg_pool2d(m, k, stride=1, padding=k // 2, count_include_pad=self.config.pad_neighbourhood)
        if resample and m.shape[-1] != self.grid:
            m = F.interpolate(m, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
        return m

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        k = self.config.neighbourhood
        return torch.cat([self.aggregate(m, k) for m in self.layer_maps(images)], dim=1).contiguous()
