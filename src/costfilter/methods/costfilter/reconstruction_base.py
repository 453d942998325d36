"""Reconstruction base (Dinomaly-style, light): a noisy bottleneck and a small decoder that
reconstruct the frozen backbone's features from normal images only. Initial map = 1 − cosine
between the features and their reconstruction; the reconstruction is the template."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureReconstructor(nn.Module):
    """``forward((B, C, h, w)) → (B, C, h, w)`` reconstruction. Dropout in the bottleneck is the
    noise that keeps it from learning the identity, so anomalies reconstruct as normal."""

    def __init__(self, channels: int, hidden: int | None = None, dropout: float = 0.3):
        super().__init__()
        hidden = hidden or max(channels // 2, 8)
        self.encode = nn.Sequential(nn.Dropout(dropout), nn.Conv2d(channels, hidden, 1), nn.GELU(), nn.Dropout(dropout))
        self.mix = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU(),
                                 nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU())
        self.decode = nn.Conv2d(hidden, channels, 1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.decode(self.mix(self.encode(feats)))


def cosine_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` × 2 → ``(B, h, w)`` cosine distance ``1 − cos`` per location."""
    return 1.0 - F.cosine_similarity(a, b, dim=1)


class ReconstructionBase(nn.Module):
    """``forward(feats) → (initial map (B, h, w), templates (B, 1, C, h, w))``."""

    def __init__(self, channels: int):
        super().__init__()
        self.reconstructor = FeatureReconstructor(channels)

    def forward(self, feats: torch.Tensor, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        recon = self.reconstructor(feats)
        return cosine_map(feats, recon), recon.unsqueeze(1)
