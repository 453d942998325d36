"""Nearest-neighbour search in bounded memory: exact float32, a bfloat16 variant several times
faster on CPUs with bfloat16 matrix units, and an optional faiss backend.

Every search takes optional *groups*: ``query_groups`` (M,) and ``bank_groups`` (K,) integer
labels; a query never matches a bank row of its own group. Leave-one-image-out calibration uses
this with the source image of each row as its group.
"""

from __future__ import annotations

import functools

import torch

# 8 MB distance blocks stay in cache; measured fastest here among 2–64 MB.
DEFAULT_CHUNK_BYTES = 8 * 2**20
#: search precisions a memory bank accepts
PRECISIONS = ("auto", "float32", "bfloat16")
#: below this many bank rows ``auto`` stays exact: the search is cheap anyway
AUTO_MIN_ROWS = 2048
# bfloat16 blocks: 1024 queries × 4096 bank rows (8 MB of bfloat16 output) measured fastest here.
_BF16_ROWS, _BF16_COLS = 1024, 4096


def sq_distances(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor | None = None) -> torch.Tensor:
    """``(M, D)`` × ``(K, D)`` → ``(M, K)`` squared Euclidean distances ``‖a‖² + ‖b‖² − 2 a·b``
    in one GEMM; written out rather than ``cdist`` so traced graphs export to ONNX."""
    b_sq = (b * b).sum(1) if b_sq is None else b_sq
    return torch.addmm(b_sq.unsqueeze(0), a, b.t(), alpha=-2) + (a * a).sum(1, keepdim=True)


def _mask_own(d2: torch.Tensor, query_groups: torch.Tensor | None, bank_groups: torch.Tensor | None) -> torch.Tensor:
    """``d2`` (rows, cols) with +inf where a query's group equals a bank row's group."""
    if query_groups is None or bank_groups is None:
        return d2
    first = query_groups[0]
    if bool((query_groups == first).all()):
        # The usual block: every query from one image. Masking whole columns is one small pass.
        d2[:, bank_groups == first] = float("inf")
        return d2
    return d2.masked_fill_(query_groups[:, None] == bank_groups[None, :], float("inf"))


def nearest(
    queries: torch.Tensor, bank: torch.Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    bank_sq: torch.Tensor | None = None, *, query_groups: torch.Tensor | None = None,
    bank_groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Euclidean distance and index of each query's nearest bank row (float32).

    Args:
        queries: ``(M, D)`` float.
        bank: ``(K, D)`` float.
        chunk_bytes: the ``(rows, K)`` distance block is at most this big.
        bank_sq: precomputed ``(K,)`` squared norms of ``bank`` (saves a pass per call).
        query_groups, bank_groups: ``(M,)`` / ``(K,)`` labels; rows of a query's own group are
            skipped (a query whose every row is skipped gets distance ``inf``).

    Returns:
        ``(M,)`` float32 distances and ``(M,)`` int64 indices.
    """
    q = queries.float()
    bank = bank.float()
    bsq = (bank * bank).sum(1) if bank_sq is None else bank_sq
    rows = max(1, chunk_bytes // (4 * max(1, bank.shape[0])))
    dists = torch.empty(q.shape[0], device=q.device)
    idx = torch.empty(q.shape[0], dtype=torch.long, device=q.device)
    bank_t = bank.t()
    for i in range(0, q.shape[0], rows):
        qc = q[i : i + rows]
        # ‖q − b‖² = ‖q‖² + ‖b‖² − 2 q·b, in one GEMM per chunk.
        d2 = torch.addmm(bsq.unsqueeze(0), qc, bank_t, alpha=-2)
        d2 = _mask_own(d2, None if query_groups is None else query_groups[i : i + rows], bank_groups)
        m, j = d2.min(dim=1)
        m.add_((qc * qc).sum(1))
        dists[i : i + rows] = m.clamp_(min=0).sqrt_()
        idx[i : i + rows] = j
    return dists, idx


class Bf16Bank:
    """A bank prepared for :func:`nearest_bf16`: rows centred on their mean and laid out as
    ``[−2 (b − μ), ‖b − μ‖²]`` in bfloat16, so one GEMM gives ``‖b − μ‖² − 2 (q − μ)·(b − μ)``.

    Centring keeps the numbers small, which is what bfloat16's 8-bit mantissa needs; the GEMM
    accumulates in float32 inside oneDNN.
    """

    def __init__(self, bank: torch.Tensor):
        bank = bank.float()
        self.mean = bank.mean(0)
        centred = bank - self.mean
        self.matrix = torch.cat([-2 * centred, (centred * centred).sum(1, keepdim=True)], 1).bfloat16().t().contiguous()


def nearest_bf16(queries: torch.Tensor, prepared: Bf16Bank, *, query_groups: torch.Tensor | None = None,
                 bank_groups: torch.Tensor | None = None) -> torch.Tensor:
    """Approximate nearest-neighbour distances ``(M,)`` through a bfloat16 GEMM.

    Same contract as :func:`nearest` without the indices. Measured against the exact search on
    real patch features (magnetic_tile, 10,000-row bank): median relative error 0.1 %, 99th
    percentile 0.7 %; the smoothed anomaly maps and image scores move far less.
    """
    q = queries.float() - prepared.mean
    qa = torch.cat([q, torch.ones(len(q), 1, device=q.device)], 1).bfloat16()
    k = prepared.matrix.shape[1]
    out = torch.empty(len(q), device=q.device)
    for i in range(0, len(q), _BF16_ROWS):
        best: torch.Tensor | None = None
        qg = None if query_groups is None else query_groups[i : i + _BF16_ROWS]
        for j in range(0, k, _BF16_COLS):
            block = torch.mm(qa[i : i + _BF16_ROWS], prepared.matrix[:, j : j + _BF16_COLS])
            if qg is not None and bank_groups is not None:
                block = _mask_own(block, qg, bank_groups[j : j + _BF16_COLS])
            m = block.amin(1)
            best = m if best is None else torch.minimum(best, m)
        assert best is not None
        out[i : i + _BF16_ROWS] = best.float()
    return out.add_((q * q).sum(1)).clamp_(min=0).sqrt_()


@functools.cache
def bf16_is_fast() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX); elsewhere
    bfloat16 is emulated and slower, so ``auto`` stays in float32.

    Read from the CPU's feature flags, never timed: a timing taken while the machine was busy
    came out wrong in 1 of 5 fresh processes here, and the search precision, and so the scores'
    last digits, must not depend on how busy the machine was when a process started."""
    return any(bool(getattr(torch.cpu, name, lambda: False)())
               for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def resolve_precision(precision: str, bank_rows: int, device: torch.device | None = None) -> str:
    """``float32`` or ``bfloat16`` for a configured precision (``auto``: bfloat16 for banks of
    at least :data:`AUTO_MIN_ROWS` rows on CPUs where it is fast; float32 on a GPU, where the
    exact search is cheap)."""
    if precision != "auto":
        return precision
    if device is not None and device.type != "cpu":
        return "float32"
    return "bfloat16" if bank_rows >= AUTO_MIN_ROWS and bf16_is_fast() else "float32"


def faiss_index(bank: torch.Tensor) -> object:
    """An exact flat L2 faiss index of ``bank`` (built once per bank; faiss-cpu is optional)."""
    try:
        import faiss
    except ImportError:
        from ..errors import CostfilterError

        raise CostfilterError("search 'faiss' needs faiss-cpu: pip install 'costfilter[faiss]'") from None
    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(bank.float().contiguous().cpu().numpy())
    return index


def nearest_faiss(queries: torch.Tensor, bank: torch.Tensor, index: object | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`nearest` (without groups), through a faiss exact flat L2 index
    (``index``: one already built for ``bank``). faiss-cpu searches in host memory; the answers
    go back to the queries' device."""
    index = index if index is not None else faiss_index(bank)
    d2, i = index.search(queries.float().contiguous().cpu().numpy(), 1)  # type: ignore[attr-defined]
    dev = queries.device
    return torch.from_numpy(d2[:, 0]).clamp_(min=0).sqrt_().to(dev), torch.from_numpy(i[:, 0]).long().to(dev)
