"""Zero-shot batch mutual scoring (MuSc-style, vision only): no normal training images; each
image is scored against the *other* images of its batch, most of which are normal."""

from __future__ import annotations

import torch
from torch import nn

from ..config import DetectorConfig
from ..features import FeatureExtractor
from ..scoring import MapScorer


def mutual_patch_scores(features: torch.Tensor, fraction: float) -> torch.Tensor:
    """``(N, C, h, w)`` → ``(N, h, w)``.

    For every patch of image *i* and every other image *j*, the distance to *j*'s nearest patch;
    the patch score is the mean of the smallest ``fraction`` of those N − 1 distances (at least
    one). Anomalous references give large distances, which that robust mean leaves out.
    """
    n, c, h, w = features.shape
    if n < 2:
        raise ValueError("mutual scoring needs at least two images")
    q = features.permute(0, 2, 3, 1).reshape(n, h * w, c)
    sq = (q * q).sum(-1)  # (N, hw)
    keep = max(1, round(fraction * (n - 1)))
    out = torch.empty(n, h * w)
    for i in range(n):
        others = torch.cat([torch.arange(i), torch.arange(i + 1, n)])
        refs = q[others]  # (N-1, hw, C)
        # ‖a − b‖² per (query patch, reference image, reference patch), reduced over reference patches.
        d2 = sq[i][:, None, None] + sq[others][None] - 2 * torch.einsum("pc,jqc->pjq", q[i], refs)
        nearest = d2.amin(dim=2).clamp_(min=0).sqrt_()  # (hw, N-1)
        out[i] = nearest.sort(dim=1).values[:, :keep].mean(dim=1)
    return out.view(n, h, w)


class ZeroShotModel(nn.Module):
    """``forward((B, 3, S, S) images) → ((B, S, S) maps, (B,) scores)``, B ≥ 2: the batch is
    its own reference set, so an image's result depends on the others in its batch."""

    def __init__(self, config: DetectorConfig, features: FeatureExtractor | None = None):
        super().__init__()
        self.features = features or FeatureExtractor(config.features)
        self.fraction = config.zeroshot.fraction
        self.scorer = MapScorer(config.features.image_size, config.scoring.sigma, config.scoring.top_percent)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scorer(mutual_patch_scores(self.features(images), self.fraction))


def robust_outlier_threshold(scores: torch.Tensor, k: float) -> float:
    """``median + k · 1.4826 · MAD`` of a batch's scores: the zero-shot decision rule (no normal
    images exist to calibrate on, so an image is rejected when it stands out from its batch)."""
    med = scores.median()
    mad = (scores - med).abs().median() * 1.4826
    return float(med + k * mad)
