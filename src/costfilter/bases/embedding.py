"""Embedding base: the memory bank's distance map, and as templates the N stored normal images
nearest to the input by a global descriptor."""

from __future__ import annotations

import torch
from torch import nn

from .knn import sq_distances
from .memory_bank import MemoryBank


class EmbeddingBase(nn.Module):
    """``forward(feats, exclude) → (initial map (B, h, w), templates (B, N, C, h, w))``.

    ``templates``: ``(T, C, h, w)`` stored normal feature maps; their descriptors are the mean
    patch feature. ``exclude`` (``(B,)`` template indices, −1 for none) keeps a training image
    from being its own template, which would make every normal cost zero during training only.
    """

    def __init__(self, bank: torch.Tensor, templates: torch.Tensor, n_templates: int, search: str = "torch"):
        super().__init__()
        self.memory = MemoryBank(bank, search)
        self.register_buffer("templates", templates.float().contiguous())
        self.n_templates = n_templates

    def forward(self, feats: torch.Tensor, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        init = self.memory(feats)
        q, t = feats.mean(dim=(2, 3)), self.templates.mean(dim=(2, 3))
        d = sq_distances(q, t)  # (B, T); squared distances rank like distances
        if exclude is not None:
            hit = exclude >= 0
            d[hit, exclude[hit]] = float("inf")
        n = min(self.n_templates, self.templates.shape[0] - (1 if exclude is not None else 0))
        idx = d.topk(max(n, 1), dim=1, largest=False).indices  # (B, N)
        return init, self.templates[idx]
