"""Fast coreset and chunked search against brute-force versions."""

from __future__ import annotations

import pytest
import torch

from costfilter.bases.coreset import coverage_radius, greedy_kcenter, random_projection, select_coreset
from costfilter.bases.knn import nearest


def brute_force_greedy(x: torch.Tensor, n: int, first: int) -> list[int]:
    chosen = [first]
    for _ in range(n - 1):
        d = torch.cdist(x.double(), x[chosen].double()).min(dim=1).values
        chosen.append(int(torch.argmax(d)))
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_greedy_equals_brute_force(seed):
    x = torch.randn(400, 16, generator=torch.Generator().manual_seed(seed)).double()
    fast = greedy_kcenter(x, 25, seed=seed)
    ref = brute_force_greedy(x, 25, int(fast[0]))
    assert fast.tolist() == ref


def test_projected_greedy_has_bounded_coverage_radius():
    g = torch.Generator().manual_seed(0)
    # A dense blob plus sparse outliers on a 3-d manifold in 64-d: the case a coreset is for.
    z = torch.cat([torch.randn(1400, 3, generator=g) * 0.3, torch.rand(100, 3, generator=g) * 8 - 4])
    x = z @ torch.randn(3, 64, generator=g) + 0.01 * torch.randn(1500, 64, generator=g)
    r_exact = coverage_radius(x, x[greedy_kcenter(x, 40)])
    r_approx = coverage_radius(x, x[select_coreset(x, 40, projection_dim=16)])
    r_rand = coverage_radius(x, x[select_coreset(x, 40, sampler="random")])
    # Greedy k-centre is a 2-approximation of the optimal radius; the 16-d projection stays
    # within that factor of exact greedy, and far ahead of random subsampling.
    assert r_approx <= 2.0 * r_exact
    assert r_approx < 0.6 * r_rand


def test_random_projection_is_seeded_and_keeps_small_dims():
    x = torch.randn(50, 32)
    assert torch.equal(random_projection(x, 8, 3), random_projection(x, 8, 3))
    assert random_projection(x, 64, 0).shape == (50, 32)


@pytest.mark.parametrize("chunk_bytes", [64, 4096, 1 << 24])
def test_chunked_nearest_equals_brute_force(chunk_bytes):
    g = torch.Generator().manual_seed(1)
    q, bank = torch.randn(333, 24, generator=g), torch.randn(97, 24, generator=g)
    d, i = nearest(q, bank, chunk_bytes=chunk_bytes)
    full = torch.cdist(q.double(), bank.double())
    ref_d, ref_i = full.min(dim=1)
    assert torch.equal(i, ref_i)
    assert torch.allclose(d.double(), ref_d, atol=1e-4)


def test_faiss_backend_equals_torch():
    faiss = pytest.importorskip("faiss", reason="faiss-cpu not installed (optional extra)")
    from costfilter.bases.knn import nearest_faiss

    del faiss
    g = torch.Generator().manual_seed(2)
    q, bank = torch.randn(200, 16, generator=g), torch.randn(50, 16, generator=g)
    d1, i1 = nearest(q, bank)
    d2, i2 = nearest_faiss(q, bank)
    assert torch.equal(i1, i2)
    assert torch.allclose(d1, d2, atol=1e-4)
