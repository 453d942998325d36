"""PatchCore-style memory bank: a plain module that scores patches, and the code that fills it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MemoryBankConfig
from .coreset import select_coreset
from .knn import (
    DEFAULT_CHUNK_BYTES,
    Bf16Bank,
    faiss_index,
    nearest,
    nearest_bf16,
    nearest_faiss,
    resolve_precision,
    sq_distances,
)


class MemoryBank(nn.Module):
    """Nearest-neighbour distance of each patch to a bank of normal patch features.

    ``forward((B, C, h, w) features, exclude=None) → (B, h, w)`` distances. ``owners`` ``(K,)``
    holds the index of the fit image each bank row came from (−1: unknown, e.g. a checkpoint
    written before owners were kept); ``exclude`` ``(B,)`` names, per input, the fit image whose
    rows it must not match (−1: none), which is how fit images are scored leave-one-image-out.
    """

    def __init__(self, bank: torch.Tensor, search: str = "torch", chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 owners: torch.Tensor | None = None, precision: str = "auto"):
        super().__init__()
        self.register_buffer("bank", bank.float().contiguous())
        if owners is None:
            owners = torch.full((len(bank),), -1, dtype=torch.int32, device=bank.device)
        self.register_buffer("owners", owners.to(bank.device, torch.int32).contiguous())
        self.search = search
        self.chunk_bytes = chunk_bytes
        self.precision = precision
        # Derived from the bank and rebuilt when the bank tensor is replaced (e.g. on load).
        self._cache: dict[str, tuple[int, object]] = {}

    def _derived(self, name: str, make: Callable[[], object]) -> object:
        hit = self._cache.get(name)
        if hit is None or hit[0] != id(self.bank):
            hit = (id(self.bank), make())
            self._cache[name] = hit
        return hit[1]

    def bank_sq(self) -> torch.Tensor:
        """Squared row norms of the bank, cached until the bank tensor is replaced."""
        return self._derived("sq", lambda: (self.bank * self.bank).sum(1))  # type: ignore[return-value]

    def _groups(self, exclude: torch.Tensor | None, per_image: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if exclude is None or not bool((exclude >= 0).any()):
            return None, None
        if len(self.owners) != len(self.bank):
            raise ValueError("this bank keeps no source image per row, so it cannot exclude one")
        return exclude.to(self.owners.device, torch.int32).repeat_interleave(per_image), self.owners

    def distances(self, rows: torch.Tensor, query_groups: torch.Tensor | None = None,
                  bank_groups: torch.Tensor | None = None) -> torch.Tensor:
        """``(M, C)`` patch rows → ``(M,)`` nearest-neighbour distances (groups as in :mod:`.knn`)."""
        if torch.compiler.is_exporting():
            # A traced graph has one symbolic batch size: one float32 GEMM instead of the chunk loop.
            return sq_distances(rows, self.bank).min(dim=1).values.clamp(min=0).sqrt()
        if self.search == "faiss" and query_groups is None:
            return nearest_faiss(rows, self.bank, self._derived("faiss", lambda: faiss_index(self.bank)))[0]
        if resolve_precision(self.precision, len(self.bank), self.bank.device) == "bfloat16":
            prepared = self._derived("bf16", lambda: Bf16Bank(self.bank))
            return nearest_bf16(rows, prepared, query_groups=query_groups, bank_groups=bank_groups)  # type: ignore[arg-type]
        return nearest(rows, self.bank, self.chunk_bytes, self.bank_sq(), query_groups=query_groups,
                       bank_groups=bank_groups)[0]

    def forward(self, features: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = features.shape
        q = features.permute(0, 2, 3, 1).reshape(-1, c)
        return self.distances(q, *self._groups(exclude, h * w)).view(b, h, w)

    def reweighted_max(self, features: torch.Tensor, patch_scores: torch.Tensor, neighbours: int = 9,
                       exclude: torch.Tensor | None = None) -> torch.Tensor:
        """PatchCore's image score ``(B,)``: the largest patch distance ``s*``, weighted by how
        isolated its nearest bank row ``m*`` is: ``(1 − softmax(‖p* − n‖ for n in N_b(m*))[m*]) · s*``,
        with ``N_b(m*)`` the ``neighbours`` bank rows nearest to ``m*`` (``m*`` first).

        ``features`` ``(B, C, h, w)``, ``patch_scores`` ``(B, h, w)``. Exact float32 for the one
        patch per image it looks at.
        """
        b, c = features.shape[:2]
        flat = patch_scores.flatten(1)
        top = flat.argmax(1)
        p = features.flatten(2)[torch.arange(b, device=top.device), :, top]  # (B, C)
        bank, bsq = self.bank, (self.bank * self.bank).sum(1)
        d2 = sq_distances(p, bank, bsq)  # (B, K)
        own = None
        if exclude is not None:
            exclude = exclude.to(self.owners.device)
            own = (self.owners[None] == exclude[:, None]) & (exclude[:, None] >= 0)
            d2 = d2.masked_fill(own, float("inf"))
        m_star = d2.argmin(1)
        m = bank[m_star]
        n = min(neighbours, len(bank))
        dm = sq_distances(m, bank, bsq)
        if own is not None:
            dm = dm.masked_fill(own, float("inf"))
        dm = dm.scatter(1, m_star[:, None], float("-inf"))  # m* is its own first neighbour
        support = dm.topk(n, dim=1, largest=False).indices  # (B, n)
        dist = d2.gather(1, support).clamp(min=0).sqrt()
        weight = 1 - F.softmax(dist, dim=1)[:, 0]
        return weight * flat.gather(1, top[:, None]).squeeze(1)


@dataclass
class Patches:
    """What one pass over the fit images keeps: greedy ``candidates`` ``(N_c, C)`` with their
    patch ``ids`` (``image_row · h · w + y · w + x``), and, when it fits the memory limit, every
    patch in float16 (``cache`` ``(N, C, h, w)``) so fit images can be scored again without the
    backbone."""

    candidates: torch.Tensor
    ids: torch.Tensor
    n_patches: int
    per_image: int
    cache: torch.Tensor | None = None


def bank_size(n_patches: int, config: MemoryBankConfig) -> int:
    """Number of bank rows for ``n_patches`` training patches: ``bank_size``, or the coreset
    ratio (with its floor) when one is set; never more than there are patches."""
    if config.coreset_ratio is not None:
        return min(n_patches, max(1, round(config.coreset_ratio * n_patches), config.min_bank_size))
    return min(n_patches, config.bank_size)


def n_candidates_for(n_patches: int, target: int, config: MemoryBankConfig) -> int:
    """How many patches greedy selection considers: an explicit pre-subsample factor, else as many
    as ``greedy_budget`` multiply-adds allow (each of ``target`` steps reads every candidate)."""
    if config.presample_factor > 0:
        return min(n_patches, round(config.presample_factor * target))
    if config.greedy_budget > 0:
        dim = config.projection_dim if config.projection_dim > 0 else 152
        return min(n_patches, max(target, int(config.greedy_budget / (target * dim))))
    return n_patches


def collect_patches(feature_batches: Iterable[torch.Tensor], n_patches: int, config: MemoryBankConfig, seed: int,
                    cache_bytes: int = 0) -> Patches:
    """Stack the candidate rows of streamed ``(B, C, h, w)`` feature batches of normal images.

    ``n_patches`` is the total number of patches the batches will hold; they are kept in host
    memory, whatever device made them. When a random
    pre-subsample applies, its rows are drawn up front and only those are kept as the batches
    stream by, so memory holds the candidates, not every patch, unless the float16 cache of all
    features fits in ``cache_bytes``.
    """
    target = bank_size(n_patches, config)
    keep: torch.Tensor | None = None
    if config.sampler == "greedy":
        n_candidates = n_candidates_for(n_patches, target, config)
        if n_candidates < n_patches:
            g = torch.Generator().manual_seed(seed + 1)
            keep = torch.randperm(n_patches, generator=g, device="cpu")[:n_candidates].sort().values
    dtype = torch.float16 if config.half_precision else torch.float32
    # Filled in place: stacking a list of batches would briefly hold every candidate twice.
    out: torch.Tensor | None = None
    cache: torch.Tensor | None = None
    filled = offset = images = 0
    per_image = 0
    for feats in feature_batches:
        feats = feats.cpu()
        b, c, h, w = feats.shape
        per_image = h * w
        if out is None:
            out = torch.empty(len(keep) if keep is not None else n_patches, c, dtype=dtype, device="cpu")
            if n_patches * c * 2 <= cache_bytes:
                cache = torch.empty(n_patches // per_image, c, h, w, dtype=torch.float16, device="cpu")
        if cache is not None:
            cache[images : images + b] = feats
        rows = feats.permute(0, 2, 3, 1).reshape(-1, c)
        if keep is not None:
            lo, hi = torch.searchsorted(keep, torch.tensor([offset, offset + len(rows)], device="cpu")).tolist()
            rows = rows[keep[lo:hi] - offset]
        out[filled : filled + len(rows)] = rows
        filled += len(rows)
        offset += b * per_image
        images += b
    if offset != n_patches or out is None:
        raise RuntimeError(f"expected {n_patches} patches, got {offset}")
    ids = keep if keep is not None else torch.arange(n_patches, device="cpu")
    return Patches(out, ids, n_patches, per_image, cache)


def select_bank(patches: Patches, config: MemoryBankConfig, seed: int,
                on_selected: Callable[[int], None] | None = None, device: torch.device | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The bank ``(K, C)`` float32 by the configured sampler, and each row's patch id ``(K,)``
    (``image_row · h · w + y · w + x``; ``id // (h · w)`` is its source image), both on ``device``
    (default: the candidates'), where the selection runs."""
    device = device or patches.candidates.device
    chosen = select_coreset(patches.candidates.to(device), bank_size(patches.n_patches, config),
                            sampler=config.sampler, projection_dim=config.projection_dim, seed=seed,
                            progress=on_selected).cpu()
    return patches.candidates[chosen].float().contiguous().to(device), patches.ids[chosen].to(device)
