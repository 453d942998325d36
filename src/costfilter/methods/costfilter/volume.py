"""Matching cost volume: input features × template features.

For every input location and layer group, the cosine distance ``1 − cos`` to every location of
every template; the ``K`` smallest are kept. Two layouts:

* ``template`` (the reference's): the kept costs stay in template-index order (the smallest K
  are found, then gathered at their sorted indices), so each slot still says *where* in the
  templates the match lies. Layout ``(B, K, L, h, w)``: K is the channel axis, the layer groups
  the depth axis of the 3-D convolutions.
* ``sorted`` (this project's first version): the kept costs in ascending order, laid out
  ``(B, L, K, h, w)``; ``volume[:, :, 0]`` is the classic nearest-neighbour map of each group.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

ORDERS = ("template", "sorted")


def cost_volume(query: torch.Tensor, templates: torch.Tensor, groups: Sequence[tuple[int, int]], k: int,
                order: str = "template") -> torch.Tensor:
    """Build the volume.

    Args:
        query: ``(B, C, h, w)`` input features.
        templates: ``(B, N, C, ht, wt)`` each input's N normal templates.
        groups: channel ranges ``[(start, stop), …]``, one per layer group (L of them).
        k: costs kept per location (``sorted``: at most ``N · ht · wt``; ``template``: slots past
            that hold cost 2, the largest, so the channel count is always ``k``).
        order: ``template`` → ``(B, K, L, h, w)`` in template-index order; ``sorted`` →
            ``(B, L, K, h, w)`` ascending.
    """
    b, c, h, w = query.shape
    m = templates.shape[1] * templates.shape[3] * templates.shape[4]
    want, k = k, min(k, m)
    out = []
    for start, stop in groups:
        q = F.normalize(query[:, start:stop].flatten(2), dim=1)  # (B, c, hw)
        t = F.normalize(templates[:, :, start:stop].transpose(1, 2).flatten(2), dim=1)  # (B, c, M)
        # The smallest costs 1 − cos are the largest cosines: select on the similarity and turn
        # only the K kept values into costs (one pass over the (B, hw, M) block fewer).
        sim = torch.bmm(q.transpose(1, 2), t)  # (B, hw, M)
        if order == "sorted":
            kept = 1.0 - sim.topk(k, dim=2, sorted=True).values  # (B, hw, K) ascending costs
        else:
            idx = sim.topk(k, dim=2, sorted=False).indices.sort(dim=2).values
            kept = 1.0 - sim.gather(2, idx)
        out.append(kept.transpose(1, 2).reshape(b, k, h, w))
    if order == "sorted":
        return torch.stack(out, dim=1)
    volume = torch.stack(out, dim=2)
    if k < want:  # fewer template locations than slots: the rest say "no match" (cost 2, the largest)
        volume = F.pad(volume, (0, 0, 0, 0, 0, 0, 0, want - k), value=2.0)
    return volume
