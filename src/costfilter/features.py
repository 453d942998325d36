"""Images → multi-layer patch features ``(B, C, h, w)``, with ImageNet normalisation inside."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone, build_backbone
from .config import FeatureConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureExtractor(nn.Module):
    """Frozen backbone + local neighbourhood aggregation + resampling to the finest tapped grid.

    ``forward`` takes ``(B, 3, S, S)`` images, uint8 (0–255) or float (0–1), and returns
    ``(B, C, h, w)`` with ``C = sum(backbone.channels)`` and ``h = w = S / min(strides)``.
    """

    def __init__(self, config: FeatureConfig, backbone: Backbone | None = None):
        super().__init__()
        self.config = config
        self.backbone = backbone or build_backbone(config.backbone, config.layers, config.image_size, config.weights)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.channels = sum(self.backbone.channels)
        self.stride = min(self.backbone.strides)
        self.grid = config.image_size // self.stride

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float images → ImageNet-normalised float."""
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.backbone(self.normalise(images))
        k = self.config.neighbourhood
        out = []
        for m in maps:
            if k > 1:
                # Each patch sees its k×k neighbourhood: robust to small shifts (PatchCore's aggregation).
                m = F.avg_pool2d(m, k, stride=1, padding=k // 2, count_include_pad=self.config.pad_neighbourhood)
            if m.shape[-1] != self.grid:
                m = F.interpolate(m, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
            out.append(m)
        return torch.cat(out, dim=1).contiguous()
