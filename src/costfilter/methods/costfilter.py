"""CostFilter-AD as one module: features → base (initial map, templates) → cost volume →
filtering network → blend with the base map → smoothed map and image score."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ..bases.embedding import EmbeddingBase
from ..bases.reconstruction import ReconstructionBase
from ..config import DetectorConfig
from ..costvolume import cost_volume
from ..features import FeatureExtractor
from ..filtering import CostFilterNet
from ..scoring import MapScorer
from ..training.costfilter import fit_costfilter
from .base import Method


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
        self.register_buffer("blend", torch.tensor(0.0 if cf.blend is None else cf.blend))
        self.scorer = MapScorer(config.features.image_size, config.scoring.sigma, config.scoring.top_percent)

    def inputs(self, images: torch.Tensor, exclude: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The filter's inputs: the cost volume (see :func:`~costfilter.costvolume.cost_volume`),
        features ``(B, C, h, w)``, normalised initial map ``(B, h, w)``. ``exclude``: per image the
        fit image its base must leave out (cross-fitting). No gradients flow here: backbone and
        base are frozen."""
        with torch.no_grad():
            feats = self.features(images)
            init, templates = self.base(feats, exclude)
            volume = cost_volume(feats, templates, self.groups, self.top_k, self.order)
        return volume, feats, init / self.init_scale

    def fuse(self, logits: torch.Tensor, init: torch.Tensor, blend: torch.Tensor | float | None = None) -> torch.Tensor:
        """``(B, S, S)`` final map before smoothing: ``λ · P(anomalous) + (1 − λ) · base map``
        (λ on the filter), or ``(1 − λ) · P + λ · base`` (λ on the base, the first version)."""
        lam = self.blend if blend is None else blend
        prob = self.scorer.upsample(logits.softmax(1)[:, 1])
        base = self.scorer.upsample(init)
        if self.blend_on == "filter":
            return lam * prob + (1 - lam) * base
        return (1 - lam) * prob + lam * base

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        volume, feats, init = self.inputs(images)
        logits, _ = self.filter(volume, feats, init.unsqueeze(1))
        return self.scorer.finish(self.fuse(logits, init))


METHOD = Method("costfilter", CostFilterModel, fit=fit_costfilter, trains=True)
