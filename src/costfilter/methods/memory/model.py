"""The memory-bank model: features → nearest-neighbour distances to the bank → map and score."""

from __future__ import annotations

import torch
from torch import nn

from ...bank.memory_bank import MemoryBank
from ...bank.routing import CategoryRouter
from ...config import DetectorConfig
from ...features import FeatureExtractor
from ...maps import MapScorer


class MemoryBankModel(nn.Module):
    """``forward((B, 3, S, S) images, exclude=None) → ((B, S, S) maps, (B,) scores)``.

    ``exclude`` ``(B,)``: per input, the fit image whose bank rows it must not match (−1: none),
    for leave-one-image-out scoring of the fit images themselves. With several learned
    categories (``router``), each image is scored against its own category's rows only.
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
        self.router = CategoryRouter()
        self._category_banks: dict[tuple[int, int, int, int], MemoryBank] = {}

    def set_bank(self, bank: torch.Tensor, owners: torch.Tensor | None = None) -> None:
        """Replace the bank (``(K, C)`` float) and, if known, each row's source fit image ``(K,)``."""
        old = self.memory
        self.memory = MemoryBank(bank, old.search, old.chunk_bytes, owners, old.precision)

    def category_bank(self, i: int) -> MemoryBank:
        """Category ``i``'s rows as a bank of their own (views of the whole bank, cached)."""
        a, b = self.router.rows(i)
        key = (i, a, b, id(self.memory.bank))
        if key not in self._category_banks:
            m = self.memory
            self._category_banks = {k: v for k, v in self._category_banks.items() if k[3] == key[3]}
            self._category_banks[key] = MemoryBank(m.bank[a:b], m.search, m.chunk_bytes, m.owners[a:b], m.precision)
        return self._category_banks[key]

    def _score(self, bank: MemoryBank, feats: torch.Tensor, exclude: torch.Tensor | None,
               patch: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if patch is None:
            patch = bank(feats, exclude)
        maps, scores = self.scorer(patch)
        if self.image_score == "reweighted_max":
            scores = bank.reweighted_max(feats, patch, self.neighbours, exclude)
        return maps, scores

    def score_routed(self, feats: torch.Tensor, exclude: torch.Tensor | None = None,
                     category: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, C, h, w)`` features → ``((B, S, S) maps, (B,) scores, (B,) category index)``.

        ``category`` ``(B,)`` forces the category each image is scored as (calibrating a
        category on its own images); by default it is routed (:class:`CategoryRouter`)."""
        b = len(feats)
        if self.router.n == 0:
            return *self._score(self.memory, feats, exclude), torch.zeros(b, dtype=torch.long, device=feats.device)
        banks = [self.category_bank(i) for i in range(self.router.n)]
        distances: list[torch.Tensor] | None = None
        if category is None:
            distances = [bank(feats) for bank in banks]
            category = self.router.route(distances)
        maps = torch.empty(b, self.scorer.image_size, self.scorer.image_size, device=feats.device)
        scores = torch.empty(b, device=feats.device)
        for i in category.unique().tolist():
            sel = category == i
            ex = exclude[sel] if exclude is not None else None
            patch = distances[i][sel] if distances is not None and ex is None else None
            maps[sel], scores[sel] = self._score(banks[i], feats[sel], ex, patch)
        return maps, scores, category

    def score_features(self, feats: torch.Tensor, exclude: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, h, w)`` features → ``((B, S, S) maps, (B,) scores)``."""
        if self.router.n == 0:  # no category tensor: an exported graph keeps a symbolic batch size
            return self._score(self.memory, feats, exclude)
        return self.score_routed(feats, exclude)[:2]

    def routed(self, images: torch.Tensor, category: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, 3, S, S)`` → maps, scores and the ``(B,)`` category each image was scored as."""
        return self.score_routed(self.features(images), category=category)

    def forward(self, images: torch.Tensor, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.score_features(self.features(images), exclude)
