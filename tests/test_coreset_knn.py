"""Fast coreset and chunked search against brute-force versions."""

from __future__ import annotations

import pytest
import torch

from costfilter.bank.coreset import coverage_radius, greedy_kcenter, random_projection, select_coreset
from costfilter.bank.knn import nearest


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
    from costfilter.bank.knn import nearest_faiss

    del faiss
    g = torch.Generator().manual_seed(2)
    q, bank = torch.randn(200, 16, generator=g), torch.randn(50, 16, generator=g)
    d1, i1 = nearest(q, bank)
    d2, i2 = nearest_faiss(q, bank)
    assert torch.equal(i1, i2)
    assert torch.allclose(d1, d2, atol=1e-4)


def test_groups_exclude_a_querys_own_rows_exactly():
    from costfilter.bank.knn import nearest

    g = torch.Generator().manual_seed(3)
    q, bank = torch.randn(120, 12, generator=g), torch.randn(60, 12, generator=g)
    qg, bg = torch.randint(0, 4, (120,), generator=g), torch.randint(0, 4, (60,), generator=g)
    d, i = nearest(q, bank, chunk_bytes=512, query_groups=qg, bank_groups=bg)
    full = torch.cdist(q.double(), bank.double())
    full[qg[:, None] == bg[None, :]] = float("inf")
    ref_d, ref_i = full.min(dim=1)
    assert torch.equal(i, ref_i) and torch.allclose(d.double(), ref_d, atol=1e-4)
    assert (bg[i] != qg).all()


@pytest.mark.parametrize("grouped", [False, True])
def test_bfloat16_search_is_close_to_exact(grouped):
    from costfilter.bank.knn import Bf16Bank, nearest_bf16

    g = torch.Generator().manual_seed(4)
    # Patch-like features: positive, correlated, a common offset (what centring is for).
    basis = torch.randn(16, 64, generator=g)
    bank = (torch.randn(5000, 16, generator=g) @ basis).relu() + 3
    q = (torch.randn(700, 16, generator=g) @ basis).relu() + 3
    qg = torch.randint(0, 5, (700,), generator=g) if grouped else None
    bg = torch.randint(0, 5, (5000,), generator=g) if grouped else None
    exact, _ = nearest(q, bank, query_groups=qg, bank_groups=bg)
    approx = nearest_bf16(q, Bf16Bank(bank), query_groups=qg, bank_groups=bg)
    rel = ((approx - exact) / exact).abs()
    assert float(rel.median()) < 0.003 and float(rel.max()) < 0.05


def test_memory_bank_picks_bfloat16_only_when_asked_or_large_and_fast(monkeypatch):
    from costfilter.bank import knn

    assert knn.resolve_precision("float32", 10**6) == "float32"
    assert knn.resolve_precision("bfloat16", 10) == "bfloat16"
    assert knn.resolve_precision("auto", knn.AUTO_MIN_ROWS - 1) == "float32"  # small banks stay exact
    monkeypatch.setattr(knn, "bf16_is_fast", lambda: False)
    assert knn.resolve_precision("auto", 10**6) == "float32"
    monkeypatch.setattr(knn, "bf16_is_fast", lambda: True)
    assert knn.resolve_precision("auto", 10**6) == "bfloat16"


def test_bfloat16_search_follows_the_cpu_flags_not_a_timing(monkeypatch):
    import torch

    from costfilter.bank import knn

    for avx512, amx, expected in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        knn.bf16_is_fast.cache_clear()
        assert knn.bf16_is_fast() is expected
    knn.bf16_is_fast.cache_clear()  # the next caller sees this CPU's own flags


def test_reweighted_max_matches_patchcore_by_hand():
    from costfilter.bank.memory_bank import MemoryBank

    g = torch.Generator().manual_seed(5)
    bank = torch.randn(40, 6, generator=g)
    feats = torch.randn(3, 6, 4, 4, generator=g)
    mb = MemoryBank(bank, precision="float32")
    patch = mb(feats)
    got = mb.reweighted_max(feats, patch, neighbours=5)
    for b in range(3):
        q = feats[b].flatten(1).t().double()
        d = torch.cdist(q, bank.double())
        top = int(d.min(1).values.argmax())  # the most anomalous patch p*
        s_star, m_star = d[top].min(0)
        # its nearest bank row m* and m*'s 5 nearest rows (m* itself first)
        support = torch.cdist(bank[m_star][None].double(), bank.double())[0].argsort()[:5]
        assert int(support[0]) == int(m_star)
        w = 1 - torch.softmax(d[top, support], 0)[0]
        assert float(got[b]) == pytest.approx(float(w * s_star), rel=1e-4)


def test_neighbourhood_average_counts_padding_as_patchcore():
    import torch.nn.functional as F

    from costfilter.config import FeatureConfig
    from costfilter.features import FeatureExtractor

    cfg = FeatureConfig(image_size=64)
    fx = FeatureExtractor(cfg).eval()
    x = torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        raw = fx.backbone(fx.normalise(x))[0]  # stride 8: the grid itself
        out = fx(x)[:, : raw.shape[1]]
        c = raw.shape[1]
        # Sum of the 3×3 neighbourhood over a zero-padded map, always divided by 9.
        by_hand = F.conv2d(F.pad(raw, (1, 1, 1, 1)), torch.ones(c, 1, 3, 3), groups=c) / 9
    assert torch.allclose(out, by_hand, atol=1e-5)
    cfg.pad_neighbourhood = False
    with torch.no_grad():
        corner = FeatureExtractor(cfg, backbone=fx.backbone)(x)[0, :c, 0, 0]
    assert torch.allclose(corner, raw[0, :, :2, :2].mean(dim=(1, 2)), atol=1e-5)  # 4 real neighbours
