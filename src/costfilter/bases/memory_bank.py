"""PatchCore-style memory bank: a plain module that scores patches, and the code that fills it."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..config import MemoryBankConfig
from .coreset import select_coreset
from .knn import DEFAULT_CHUNK_BYTES, nearest, nearest_faiss


class MemoryBank(nn.Module):
    """Nearest-neighbour distance of each patch to a bank of normal patch features.

    ``forward`` takes ``(B, C, h, w)`` features and returns ``(B, h, w)`` distances.
    """

    def __init__(self, bank: torch.Tensor, search: str = "torch", chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        super().__init__()
        self.register_buffer("bank", bank.float().contiguous())
        self.search = search
        self.chunk_bytes = chunk_bytes
        self._sq: tuple[int, torch.Tensor] | None = None

    def bank_sq(self) -> torch.Tensor:
        """Squared row norms of the bank, cached until the bank tensor is replaced (e.g. on load)."""
        if self._sq is None or self._sq[0] != id(self.bank):
            self._sq = (id(self.bank), (self.bank * self.bank).sum(1))
        return self._sq[1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, c, h, w = features.shape
        q = features.permute(0, 2, 3, 1).reshape(-1, c)
        if torch.compiler.is_exporting():
            # A traced graph has one symbolic batch size: one GEMM instead of the chunk loop.
            d2 = torch.addmm((self.bank * self.bank).sum(1).unsqueeze(0), q, self.bank.t(), alpha=-2)
            d = (d2.min(dim=1).values + (q * q).sum(1)).clamp(min=0).sqrt()
        elif self.search == "faiss":
            d, _ = nearest_faiss(q, self.bank)
        else:
            d, _ = nearest(q, self.bank, self.chunk_bytes, self.bank_sq())
        return d.view(b, h, w)


def bank_size(n_patches: int, config: MemoryBankConfig) -> int:
    """Number of bank rows for ``n_patches`` training patches: the ratio, with a floor."""
    return min(n_patches, max(1, round(config.coreset_ratio * n_patches), config.min_bank_size))


def n_candidates_for(n_patches: int, target: int, config: MemoryBankConfig) -> int:
    """How many patches greedy selection considers: an explicit pre-subsample factor, else as many
    as ``greedy_budget`` multiply-adds allow (each of ``target`` steps reads every candidate)."""
    if config.presample_factor > 0:
        return min(n_patches, round(config.presample_factor * target))
    if config.greedy_budget > 0:
        dim = config.projection_dim if config.projection_dim > 0 else 152
        return min(n_patches, max(target, int(config.greedy_budget / (target * dim))))
    return n_patches


def collect_candidates(feature_batches: Iterable[torch.Tensor], n_patches: int, config: MemoryBankConfig,
                       seed: int) -> torch.Tensor:
    """Stack the candidate rows of streamed ``(B, C, h, w)`` feature batches of normal images.

    ``n_patches`` is the total number of patches the batches will hold. When a random
    pre-subsample applies, its rows are drawn up front and only those are kept as the batches
    stream by, so memory holds the candidates, not every patch. Returns ``(N, C)``.
    """
    target = bank_size(n_patches, config)
    keep: torch.Tensor | None = None
    if config.sampler == "greedy":
        n_candidates = n_candidates_for(n_patches, target, config)
        if n_candidates < n_patches:
            g = torch.Generator().manual_seed(seed + 1)
            keep = torch.randperm(n_patches, generator=g)[:n_candidates].sort().values
    # Filled in place: stacking a list of batches would briefly hold every candidate twice.
    out: torch.Tensor | None = None
    filled = offset = 0
    for feats in feature_batches:
        rows = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
        if keep is not None:
            lo, hi = torch.searchsorted(keep, torch.tensor([offset, offset + len(rows)])).tolist()
            rows = rows[keep[lo:hi] - offset]
        if out is None:
            dtype = torch.float16 if config.half_precision else torch.float32
            out = torch.empty(len(keep) if keep is not None else n_patches, rows.shape[1], dtype=dtype)
        out[filled : filled + len(rows)] = rows
        filled += len(rows)
        offset += feats.shape[0] * feats.shape[2] * feats.shape[3]
    if offset != n_patches or out is None:
        raise RuntimeError(f"expected {n_patches} patches, got {offset}")
    return out


def select_bank(candidates: torch.Tensor, n_patches: int, config: MemoryBankConfig, seed: int,
                on_selected: Callable[[int], None] | None = None) -> torch.Tensor:
    """The bank: ``bank_size`` rows of ``candidates`` by the configured sampler, ``(K, C)`` float32."""
    chosen = select_coreset(candidates, bank_size(n_patches, config), sampler=config.sampler,
                            projection_dim=config.projection_dim, seed=seed, progress=on_selected)
    return candidates[chosen].float().contiguous()
