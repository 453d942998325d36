"""The memory-bank detector as one module: features → nearest-neighbour distances → map and score."""

from __future__ import annotations

import torch
from torch import nn

from ..bases.memory_bank import MemoryBank
from ..config import DetectorConfig
from ..features import FeatureExtractor
from ..scoring import MapScorer


class MemoryBankModel(nn.Module):
    """``forward((B, 3, S, S) images) → ((B, S, S) maps, (B,) scores)``."""

    def __init__(self, config: DetectorConfig, bank: torch.Tensor | None = None,
                 features: FeatureExtractor | None = None):
        super().__init__()
        self.features = features or FeatureExtractor(config.features)
        if bank is None:
            bank = torch.zeros(1, self.features.channels)
        self.memory = MemoryBank(bank, config.memory.search)
        self.scorer = MapScorer(config.features.image_size, config.scoring.sigma, config.scoring.top_percent)

    def set_bank(self, bank: torch.Tensor) -> None:
        """Replace the bank (``(K, C)`` float)."""
        self.memory = MemoryBank(bank, self.memory.search, self.memory.chunk_bytes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scorer(self.memory(self.features(images)))
