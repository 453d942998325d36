"""Guidance fusion: a volume block attends to the input's features and the initial anomaly map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GuidedFusion(nn.Module):
    """Concatenate the block output with projected features and initial map (both broadcast over
    the matching dim), re-weight with CBAM-style channel and spatial attention
    (``sigmoid(att) · x + x``), and project back to ``width`` channels with a 1×1×1 conv.

    ``forward(x (B, W, K, h, w), feats (B, C, H, W), init (B, 1, H, W)) → (B, W, K, h, w)``.
    """

    def __init__(self, width: int, feat_channels: int, reduction: int = 4):
        super().__init__()
        self.feat_proj = nn.Conv3d(feat_channels, width, 1)
        self.map_proj = nn.Conv3d(1, width, 1)
        cat = 3 * width
        self.channel_mlp = nn.Sequential(nn.Conv3d(cat, max(cat // reduction, 4), 1), nn.ReLU(inplace=True),
                                         nn.Conv3d(max(cat // reduction, 4), cat, 1))
        self.spatial = nn.Conv3d(2, 1, (1, 3, 3), padding=(0, 1, 1))
        self.out = nn.Sequential(nn.Conv3d(cat, width, 1), nn.BatchNorm3d(width), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, feats: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
        k, h, w = x.shape[2:]
        f = F.adaptive_avg_pool2d(feats, (h, w)).unsqueeze(2)
        m = F.adaptive_avg_pool2d(init, (h, w)).unsqueeze(2)
        y = torch.cat([x, self.feat_proj(f).expand(-1, -1, k, -1, -1), self.map_proj(m).expand(-1, -1, k, -1, -1)], 1)
        att = self.channel_mlp(y.mean(dim=(2, 3, 4), keepdim=True)) + self.channel_mlp(y.amax(dim=(2, 3, 4), keepdim=True))
        y = torch.sigmoid(att) * y + y
        s = self.spatial(torch.cat([y.mean(1, keepdim=True), y.amax(1, keepdim=True)], 1))
        y = torch.sigmoid(s) * y + y
        return self.out(y)
