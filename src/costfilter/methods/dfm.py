"""DFM: nearest-neighbour matching made differentiable. The hard minimum over a memory of normal
patches becomes a temperature soft-min, ``−τ · log Σ exp(−d / τ)``, over each patch's nearest
candidates, behind a trainable 1 × 1 adapter, so that matching and adapter train end to end
(normal images + synthetic anomalies); with ``dfm.train_backbone`` the tapped backbone stages
train with them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..bases.knn import sq_distances
from ..config import DetectorConfig
from ..features import FeatureExtractor
from ..scoring import MapScorer
from ..training.dfm import fit_dfm
from .base import Method


def soft_min(d: torch.Tensor, tau: torch.Tensor | float, dim: int = -1) -> torch.Tensor:
    """``−τ · logsumexp(−d / τ)`` along ``dim``: a smooth lower bound of ``min(d)``, equal to it as τ → 0."""
    return -tau * torch.logsumexp(-d / tau, dim=dim)


class DFMModel(nn.Module):
    """``forward((B, 3, S, S)) → ((B, S, S) maps, (B,) scores)``; ``patch_scores`` is differentiable
    in the adapter and τ. ``scale``/``shift`` map scores to training logits only."""

    def __init__(self, config: DetectorConfig, features: FeatureExtractor | None = None):
        super().__init__()
        self.features = features or FeatureExtractor(config.features)
        c = self.features.channels
        self.adapter = nn.Conv2d(c, c, 1) if config.dfm.adapter else None
        if self.adapter is not None:
            with torch.no_grad():  # start as the identity: training starts from plain matching
                self.adapter.weight.copy_(torch.eye(c).view(c, c, 1, 1))
                self.adapter.bias.zero_()
        self.register_buffer("bank", torch.zeros(1, c))
        self.log_tau = nn.Parameter(torch.tensor(math.log(config.dfm.temperature)))
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.shift = nn.Parameter(torch.tensor(0.0))
        self.candidates = config.dfm.candidates
        self.scorer = MapScorer(config.features.image_size, config.scoring.sigma, config.scoring.top_percent)
        self.backbone_params = self.features.backbone.unfreeze_tapped_stages() if config.dfm.train_backbone else []

    @property
    def trained_feature_keys(self) -> set[str]:
        """State-dict keys of the backbone weights this model trained (saved in its checkpoint;
        a frozen backbone's weights come from their package)."""
        trained = {id(p) for p in self.backbone_params}
        return {k for k, p in self.named_parameters() if id(p) in trained}

    def set_bank(self, bank: torch.Tensor) -> None:
        """Normal patch features ``(K, C)`` in the backbone's space (the adapter maps both sides)."""
        self.bank = bank.float().contiguous()

    def _adapt(self, rows: torch.Tensor) -> torch.Tensor:
        if self.adapter is None:
            return rows
        return F.linear(rows, self.adapter.weight.flatten(1), self.adapter.bias)

    def patch_scores(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` → ``(B, h, w)`` soft-min distance to the (adapted) bank."""
        b, c, h, w = feats.shape
        q = self._adapt(feats.permute(0, 2, 3, 1).reshape(-1, c))
        bank = self._adapt(self.bank)
        with torch.no_grad():  # which candidates: hard nearest ones; the soft-min is over them
            idx = sq_distances(q, bank).topk(min(self.candidates, len(bank)), dim=1, largest=False).indices
        d = (q.unsqueeze(1) - bank[idx]).pow(2).sum(-1).clamp(min=1e-12).sqrt()
        return soft_min(d, self.log_tau.exp(), dim=1).view(b, h, w)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scorer(self.patch_scores(self.features(images)))


METHOD = Method("dfm", DFMModel, fit=fit_dfm, trains=True)
