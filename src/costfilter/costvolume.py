"""Matching cost volume: input features × template features → ``(B, L, K, h, w)``.

For every input location and layer group, the cosine distance ``1 − cos`` to every location of
every template, of which the ``K`` smallest are kept in ascending order. ``volume[:, :, 0]`` is the
classic nearest-neighbour anomaly map of each group.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def cost_volume(query: torch.Tensor, templates: torch.Tensor, groups: Sequence[tuple[int, int]], k: int) -> torch.Tensor:
    """Build the volume.

    Args:
        query: ``(B, C, h, w)`` input features.
        templates: ``(B, N, C, ht, wt)`` each input's N normal templates.
        groups: channel ranges ``[(start, stop), …]``, one per layer group (L of them).
        k: costs kept per location (clamped to ``N · ht · wt``).

    Returns:
        ``(B, L, K, h, w)`` ascending costs.
    """
    b, c, h, w = query.shape
    m = templates.shape[1] * templates.shape[3] * templates.shape[4]
    k = min(k, m)
    out = []
    for start, stop in groups:
        q = F.normalize(query[:, start:stop].flatten(2), dim=1)  # (B, c, hw)
        t = F.normalize(templates[:, :, start:stop].transpose(1, 2).flatten(2), dim=1)  # (B, c, M)
        cost = 1.0 - torch.bmm(q.transpose(1, 2), t)  # (B, hw, M)
        kept = cost.topk(k, dim=2, largest=False, sorted=True).values  # (B, hw, K)
        out.append(kept.transpose(1, 2).reshape(b, k, h, w))
    return torch.stack(out, dim=1)
