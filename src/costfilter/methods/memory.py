"""The memory-bank detector as one module: features → nearest-neighbour distances → map and score."""

from __future__ import annotations

import torch
from torch import nn

from ..bases.memory_bank import MemoryBank
from ..config import DetectorConfig
from ..features import FeatureExtractor
from ..scoring import MapScorer
from ..training.memory import fit_memory
from .base import Method


class MemoryBankModel(nn.Module):
    """``forward((B, 3, S, S) images, exclude=None) → ((B, S, S) maps, (B,) scores)``.

    ``exclude`` ``(B,)``: per input, the fit image whose bank rows it must not match (−1: none),
    for leave-one-image-out scoring of the fit images themselves.
    """

    def __init__(self, config: DetectorConfig, bank: torch.Tensor | None = None,
                 features: FeatureExtractor | None = None):
        super().__init__()
        self.features = features or FeatureExtractor(config.features)
        if bank is None:
            bank = torch.zeros(1, self.features.channels)
        m = config.memory
        self.memory = MemoryBank(bank, m.search, precision=m.search_precision)
        self.scorer = MapScorer(config.features.image_size, config.scoring.sigma, config.scoring.top_percent)
        self.image_score = config.scoring.image_score
        self.neighbours = config.scoring.reweight_neighbours

    def set_bank(self, bank: torch.Tensor, owners: torch.Tensor | None = None) -> None:
        """Replace the bank (``(K, C)`` float) and, if known, each row's source fit image ``(K,)``."""
        old = self.memory
        self.memory = MemoryBank(bank, old.search, old.chunk_bytes, owners, old.precision)

    def score_features(self, feats: torch.Tensor, exclude: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, h, w)`` features → ``((B, S, S) maps, (B,) scores)``."""
        patch = self.memory(feats, exclude)
        maps, scores = self.scorer(patch)
        if self.image_score == "reweighted_max":
            scores = self.memory.reweighted_max(feats, patch, self.neighbours, exclude)
        return maps, scores

    def forward(self, images: torch.Tensor, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.score_features(self.features(images), exclude)


METHOD = Method("memory", MemoryBankModel, fit=fit_memory)
