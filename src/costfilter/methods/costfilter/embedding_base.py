"""Embedding base: the memory bank's distance map, and as templates the N stored normal images
nearest to the input by a global descriptor."""

from __future__ import annotations

import torch
from torch import nn

from ...bank.knn import sq_distances
from ...bank.memory_bank import MemoryBank


class EmbeddingBase(nn.Module):
    """``forward(feats, exclude) → (initial map (B, h, w), templates (B, N, C, h, w))``.

    ``templates``: ``(T, C, h, w)`` stored normal feature maps (kept in float16), their
    descriptors the mean patch feature; ``template_owners`` ``(T,)`` the fit image each came
    from. ``exclude`` ``(B,)``: per input, the fit image it must not be matched against (−1:
    none), in the bank and among the templates alike: a training image is then scored as an
    unseen one would be (leave-one-image-out), not against its own patches.
    """

    def __init__(self, bank: torch.Tensor, templates: torch.Tensor, n_templates: int, search: str = "torch",
                 bank_owners: torch.Tensor | None = None, template_owners: torch.Tensor | None = None,
                 precision: str = "auto"):
        super().__init__()
        self.memory = MemoryBank(bank, search, owners=bank_owners, precision=precision)
        self.register_buffer("templates", templates.half().contiguous())
        if template_owners is None:
            template_owners = torch.full((len(templates),), -1, dtype=torch.int32, device=templates.device)
        self.register_buffer("template_owners", template_owners.to(templates.device, torch.int32))
        self.n_templates = n_templates

    def forward(self, feats: torch.Tensor, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        init = self.memory(feats, exclude)
        templates = self.templates.float()
        q, t = feats.mean(dim=(2, 3)), templates.mean(dim=(2, 3))
        d = sq_distances(q, t)  # (B, T); squared distances rank like distances
        n = self.n_templates
        if exclude is not None and len(self.template_owners) == len(templates):
            exclude = exclude.to(self.template_owners.device)
            own = (self.template_owners[None] == exclude[:, None]) & (exclude[:, None] >= 0)
            d = d.masked_fill(own, float("inf"))
            n = min(n, len(templates) - int(own.sum(1).max()))
        idx = d.topk(max(min(n, len(templates)), 1), dim=1, largest=False).indices  # (B, N)
        return init, templates[idx]
