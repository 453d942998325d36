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

from ...bank.knn import sq_distances
from ...bank.routing import CategoryRouter
from ...compute import float32
from ...config import DetectorConfig
from ...features import FeatureExtractor
from ...maps import MapScorer


def soft_min(d: torch.Tensor, tau: torch.Tensor | float, dim: int = -1) -> torch.Tensor:
    """``−τ · logsumexp(−d / τ)`` along ``dim``: a smooth lower bound of ``min(d)``, equal to it as τ → 0."""
    return -tau * torch.logsumexp(-d / tau, dim=dim)


class DFMModel(nn.Module):
    """``forward((B, 3, S, S)) → ((B, S, S) maps, (B,) scores)``; ``patch_scores`` is differentiable
    in the adapter and τ. ``scale``/``shift`` map scores to training logits only.

    With several learned categories (``router``) each image matches its own category's rows.
    ``replay`` ``(R, 3, S, S)`` uint8 keeps a few normal images of each category
    (``replay_category`` ``(R,)``): continual learning trains on them next to a new category's
    images, so the shared adapter does not forget the old ones.
    """

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
        self.router = CategoryRouter()
        size = config.features.image_size
        self.register_buffer("replay", torch.zeros(0, 3, size, size, dtype=torch.uint8))
        self.register_buffer("replay_category", torch.zeros(0, dtype=torch.int64))
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

    def _match(self, feats: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        b, c, h, w = feats.shape
        with float32(feats):  # matching is distances: float32 under any training precision
            q = self._adapt(feats.float().permute(0, 2, 3, 1).reshape(-1, c))
            bank = self._adapt(rows.float())
            with torch.no_grad():  # which candidates: hard nearest ones; the soft-min is over them
                idx = sq_distances(q, bank).topk(min(self.candidates, len(bank)), dim=1, largest=False).indices
            d = (q.unsqueeze(1) - bank[idx]).pow(2).sum(-1).clamp(min=1e-12).sqrt()
            return soft_min(d, self.log_tau.exp(), dim=1).view(b, h, w)

    def _category_rows(self, i: int) -> torch.Tensor:
        a, b = self.router.rows(i)
        return self.bank[a:b]

    def patch_scores(self, feats: torch.Tensor, category: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, h, w)`` → ``(B, h, w)`` soft-min distance to the (adapted) bank, or with
        learned categories to the rows of each image's ``category`` ``(B,)`` (routed if None)."""
        return self.routed_patch_scores(feats, category)[0]

    def routed_patch_scores(self, feats: torch.Tensor, category: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch scores ``(B, h, w)`` and the ``(B,)`` category each image matched."""
        if self.router.n == 0:
            return self._match(feats, self.bank), torch.zeros(len(feats), dtype=torch.long, device=feats.device)
        if category is None:
            per_category = [self._match(feats, self._category_rows(i)) for i in range(self.router.n)]
            category = self.router.route(per_category)
            return torch.stack(per_category, 1)[torch.arange(len(feats), device=feats.device), category], category
        parts = [(torch.nonzero(category == i).flatten(), self._match(feats[category == i], self._category_rows(i)))
                 for i in category.unique().tolist()]
        order = torch.cat([idx for idx, _ in parts])  # concatenated, not written in place: keeps the graph
        return torch.cat([p for _, p in parts])[order.argsort()], category

    def routed(self, images: torch.Tensor, category: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, 3, S, S)`` → maps, scores and the ``(B,)`` category each image was scored as."""
        patch, category = self.routed_patch_scores(self.features(images), category)
        return *self.scorer(patch), category

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.router.n == 0:  # no category tensor: an exported graph keeps a symbolic batch size
            return self.scorer(self._match(self.features(images), self.bank))
        return self.routed(images)[:2]
