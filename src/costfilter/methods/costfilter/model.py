"""The CostFilter-AD model: features → base (initial map, templates) → cost volume →
filtering network → blend with the base map → smoothed map and image score."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ...config import DetectorConfig
from ...features import FeatureExtractor
from ...maps import MapScorer
from .embedding_base import EmbeddingBase
from .filter_net import CostFilterNet
from .reconstruction_base import ReconstructionBase
from .volume import cost_volume


def blend(prob: torch.Tensor, base: torch.Tensor, lam: torch.Tensor | float, on: str) -> torch.Tensor:
    """The one λ rule, for inference and validation alike: the filter's probability ``prob`` and
    the base map ``base`` (same shape) mixed as ``λ · prob + (1 − λ) · base`` when λ weighs the
    filter (``on = "filter"``, the reference's rule), or ``(1 − λ) · prob + λ · base`` when it
    weighs the base (``on = "base"``, the first version)."""
    return lam * prob + (1 - lam) * base if on == "filter" else (1 - lam) * prob + lam * base


def blend_for(filter_weight: float, on: str) -> float:
    """λ that gives the filter ``filter_weight`` under rule ``on`` (0 → the base alone)."""
    return filter_weight if on == "filter" else 1.0 - filter_weight


class CostFilterModel(nn.Module):
    """``forward((B, 3, S, S) images) → ((B, S, S) maps, (B,) scores)``.

    ``init_scale`` divides the base map so a typical normal patch is ≈ 1 (the median over
    held-out normal images, set at fit); ``blend`` is λ, the weight of the filter's probability
    (``blend_on: filter``, the reference's rule) or of the base map (``blend_on: base``).
    """

    def __init__(self, config: DetectorConfig, features: FeatureExtractor | None = None):
        super().__init__()
        cf = config.costfilter
        self.features = features or FeatureExtractor(config.features)
        c, g = self.features.channels, self.features.grid
        bounds = list(itertools.accumulate(self.features.backbone.channels, initial=0))
        self.groups = list(zip(bounds[:-1], bounds[1:]))
        if cf.base == "memory":
            self.base: nn.Module = EmbeddingBase(torch.zeros(1, c), torch.zeros(1, c, g, g), cf.n_templates,
                                                 config.memory.search, precision=config.memory.search_precision)
        else:
            self.base = ReconstructionBase(c)
        self.order = cf.volume
        in_channels = cf.top_k if cf.volume == "template" else len(self.groups)
        self.filter = CostFilterNet(in_channels, c, tuple(cf.widths), cf.n_classes)
        self.top_k = cf.top_k
        self.blend_on = cf.blend_on
        self.register_buffer("init_scale", torch.tensor(1.0))
        self.register_buffer("blend", torch.tensor(blend_for(0.0, cf.blend_on) if cf.blend is None else cf.blend))
        self.scorer = MapScorer(config.features.image_size, config.scoring.sigma, config.scoring.top_percent)

    def inputs(self, images: torch.Tensor, exclude: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The filter's inputs: the cost volume (see :func:`~costfilter.methods.costfilter.volume.cost_volume`),
        features ``(B, C, h, w)``, normalised initial map ``(B, h, w)``. ``exclude``: per image the
        fit image its base must leave out (cross-fitting). No gradients flow here: backbone and
        base are frozen."""
        with torch.no_grad():
            feats = self.features(images)
            init, templates = self.base(feats, exclude)
            volume = cost_volume(feats, templates, self.groups, self.top_k, self.order)
        return volume, feats, init / self.init_scale

    def fuse(self, logits: torch.Tensor, init: torch.Tensor, lam: torch.Tensor | float | None = None) -> torch.Tensor:
        """``(B, S, S)`` final map before smoothing: P(anomalous) and the base map mixed by
        :func:`blend` with λ (``self.blend`` unless given)."""
        lam = self.blend if lam is None else lam
        return blend(self.scorer.upsample(logits.softmax(1)[:, 1]), self.scorer.upsample(init), lam, self.blend_on)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        volume, feats, init = self.inputs(images)
        logits, _ = self.filter(volume, feats, init.unsqueeze(1))
        return self.scorer.finish(self.fuse(logits, init))
