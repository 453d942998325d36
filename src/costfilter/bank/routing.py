"""Several learned categories in one bank: which rows belong to which category, and which
category an image is scored as (continual learning: ``costfilter fit --continue``)."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn


class CategoryRouter(nn.Module):
    """The bank rows of each learned category and the routing rule.

    Categories occupy contiguous bank rows in the order they were learned: category ``i`` is
    rows ``offsets[i]:offsets[i + 1]``. A model of one category keeps ``offsets`` empty and
    scores against its whole bank, so models fitted before continual learning load unchanged.

    An image is scored as the category whose rows its *typical* patch (the median patch
    distance) is nearest to. Defects cover a minority of an image, so they do not move the
    median. Distances are compared as they are: dividing each category's by its bank's own row
    spacing was tried on one pair of products and routed more images to the wrong one.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("offsets", torch.zeros(0, dtype=torch.int64))

    @property
    def n(self) -> int:
        """Number of learned categories (0: a plain single-category model)."""
        return max(len(self.offsets) - 1, 0)

    def set(self, offsets: list[int]) -> None:
        """Category ``i`` owns bank rows ``offsets[i]:offsets[i + 1]``."""
        if len(offsets) < 2 or offsets[0] != 0 or any(b <= a for a, b in pairwise(offsets)):
            raise ValueError(f"bad category offsets {offsets}")
        self.offsets = torch.tensor(offsets, dtype=torch.int64, device=self.offsets.device)

    def add(self, rows_before: int, rows_after: int) -> int:
        """A new category owns bank rows ``rows_before:rows_after`` (appended after the others;
        a model of one category becomes category 0 first). Returns the new category's index."""
        offsets = self.offsets.tolist() or [0, rows_before]
        self.set(offsets + [rows_after])
        return self.n - 1

    def rows(self, i: int) -> tuple[int, int]:
        """Bank rows ``(start, stop)`` of category ``i``."""
        return int(self.offsets[i]), int(self.offsets[i + 1])

    def route(self, distances: list[torch.Tensor]) -> torch.Tensor:
        """Per category, ``(B, h, w)`` patch distances → ``(B,)`` index of the category each
        image is scored as."""
        typical = torch.stack([d.flatten(1).median(dim=1).values for d in distances], dim=1)  # (B, n)
        return typical.argmin(dim=1)

