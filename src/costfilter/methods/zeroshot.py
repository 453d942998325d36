"""Zero-shot batch mutual scoring (MuSc-style, vision only): no normal training images; each
image is scored against the *other* images of its batch, most of which are normal."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DetectorConfig
from ..features import FeatureExtractor
from ..scoring import MapScorer
from .base import Method


def mutual_patch_scores(features: torch.Tensor, fraction: float, references: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, C, h, w)`` → ``(N, h, w)``.

    For every patch of image *i* and every other image *j*, the distance to *j*'s nearest patch;
    the patch score is the mean of the smallest ``fraction`` of those N − 1 distances (at least
    one). Anomalous references give large distances, which that robust mean leaves out.

    ``references``: optional ``(N, h, w)`` bool, the patches that may serve as references (the
    text filter's verdict). An image none of whose patches may serve drops out of the reference
    set; if that leaves an image with no reference at all, the filter is ignored for it.
    """
    n, c, h, w = features.shape
    if n < 2:
        raise ValueError("mutual scoring needs at least two images")
    q = features.permute(0, 2, 3, 1).reshape(n, h * w, c)
    sq = (q * q).sum(-1)  # (N, hw)
    allowed = None if references is None else references.reshape(n, h * w)
    out = torch.empty(n, h * w)
    for i in range(n):
        others = torch.cat([torch.arange(i), torch.arange(i + 1, n)])
        refs = q[others]  # (N-1, hw, C)
        # ‖a − b‖² per (query patch, reference image, reference patch), reduced over reference patches.
        d2 = sq[i][:, None, None] + sq[others][None] - 2 * torch.einsum("pc,jqc->pjq", q[i], refs)
        usable = n - 1
        if allowed is not None and allowed[others].any():
            d2 = d2.masked_fill(~allowed[others][None], float("inf"))
            usable = int(allowed[others].any(dim=1).sum())
        nearest = d2.amin(dim=2).clamp_(min=0).sqrt_()  # (hw, N-1); inf for a filtered-out image
        keep = max(1, round(fraction * usable))
        out[i] = nearest.sort(dim=1).values[:, :keep].mean(dim=1)
    return out.view(n, h, w)


class ZeroShotModel(nn.Module):
    """``forward((B, 3, S, S) images) → ((B, S, S) maps, (B,) scores)``, B ≥ 2: the batch is
    its own reference set, so an image's result depends on the others in its batch."""

    def __init__(self, config: DetectorConfig, features: FeatureExtractor | None = None):
        super().__init__()
        z = config.zeroshot
        self.features = features or FeatureExtractor(config.features)
        self.fraction = z.fraction
        self.scorer = MapScorer(config.features.image_size, config.scoring.sigma, config.scoring.top_percent)
        self.text_filter: nn.Module | None = None
        if z.clip_model:
            from .clip_text import ClipPatchText

            self.text_filter = ClipPatchText(z.clip_model, z.clip_object)
        self.clip_threshold = z.clip_threshold

    def references(self, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor | None:
        """``(B, h, w)`` bool: patches the text filter lets serve as references (None: no filter)."""
        if self.text_filter is None:
            return None
        p = self.text_filter(images).unsqueeze(1)
        return F.interpolate(p, size=grid, mode="bilinear", align_corners=False).squeeze(1) <= self.clip_threshold

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(images)
        refs = self.references(images, feats.shape[-2:])
        return self.scorer(mutual_patch_scores(feats, self.fraction, refs))


def robust_outlier_threshold(scores: torch.Tensor, k: float) -> float:
    """``median + k · 1.4826 · MAD`` of a batch's scores: the zero-shot decision rule (no normal
    images exist to calibrate on, so an image is rejected when it stands out from its batch)."""
    med = scores.median()
    mad = (scores - med).abs().median() * 1.4826
    return float(med + k * mad)


#: no fit: each batch is its own reference set; no fixed graph to export
METHOD = Method("zeroshot", ZeroShotModel, fit=None, exportable=False)
