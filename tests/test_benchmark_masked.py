"""The masked benchmark end to end on a tiny generated root shaped like shared/data."""

from __future__ import annotations

import json
import os

import pytest
from conftest import make_mvtec, small_config

from benchmarks.masked import find_categories, run_masked
from costfilter.errors import DataError


def test_masked_benchmark_runs_and_finds_planted_defects(tmp_path, capsys):
    root = tmp_path / "data"
    make_mvtec(root / "setA", categories=("alpha",), n_train=6)  # nested one level, like shared/data
    make_mvtec(root / "setB", categories=("beta",), n_train=6, seed=1)
    out = tmp_path / "masked.json"
    figs = tmp_path / "figs"
    payload = run_masked(root, out, size=64, figures=figs, config=small_config())
    single = payload["runs"]["memory"]["single"]
    assert set(single) == {"alpha", "beta"}
    for cat, r in single.items():
        m = r["per_category"][cat]
        for k in ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "aupro"):
            assert 0.0 <= m[k] <= 1.0
        assert m["image_auroc"] == 1.0  # the planted squares are found
        assert r["fit_s"] > 0 and r["peak_rss_mb"] > 0
    assert set(payload["runs"]["memory"]["multi"]["per_category"]) == {"alpha", "beta"}
    assert json.loads(out.read_text())["environment"]["cpu_count"] == os.cpu_count()
    for cat in ("alpha", "beta"):
        assert (figs / f"memory-single-{cat}_grid.png").stat().st_size > 1000
        assert (figs / f"memory-single-{cat}_curves.png").stat().st_size > 1000
    assert set(payload["runs"]["memory_unpadded"]["single"]) == {"alpha", "beta"}
    full = payload["runs"]["memory_full_bank"]["single"]
    for cat in ("alpha", "beta"):  # the upper-bound bank holds every training patch: 6 images × 8 × 8
        assert full[cat]["bank_size"] == 6 * 64 > single[cat]["bank_size"]
    printed = capsys.readouterr().out
    assert "multi-class" in printed and "AUPRO@0.3" in printed and "full bank (upper bound)" in printed
    assert "border padding left out" in printed
    # the calibration check counts the test good images above each operating point's threshold
    from benchmarks.masked import calibration_check

    check = calibration_check(single).splitlines()
    assert len(check) == 2 + 2 * 3  # header, rule, 3 named points × 2 categories
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in check[2:]]
    assert all(c[5] in ("yes", "lower (stricter than asked)", "higher") and "of 3)" in c[4] for c in cells)
    # ... and the defective test images each point rejects: 3 planted defects per category here
    assert all(c[6].endswith("of 3") and "%" in c[6] for c in cells)


def test_wrong_root_says_which_layout_is_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no category in the MVTec.*train/good.*layout found"):
        find_categories(tmp_path / "empty")
    with pytest.raises(DataError, match="folder not found"):
        find_categories(tmp_path / "missing")


def test_compare_reports_moved_metrics_and_ignores_the_machine():
    from benchmarks.compare import compare, metrics

    committed = {"runs": [{"image_auroc": 0.91, "fit_s": 12.0, "peak_rss_mb": 900.0,
                           "per_category": {"a": {"aupro": 0.5, "pixel_ap": 0.25}}}],
                 "environment": {"commit": "abc", "cpu_count": 2}}
    rerun = {"runs": [{"image_auroc": 0.91, "fit_s": 30.0, "peak_rss_mb": 1200.0,
                       "per_category": {"a": {"aupro": 0.52, "pixel_ap": 0.25}}}],
             "environment": {"commit": "def", "cpu_count": 8}}
    assert set(metrics(committed)) == {"runs/0/image_auroc", "runs/0/per_category/a/aupro",
                                       "runs/0/per_category/a/pixel_ap"}
    assert compare(committed, rerun, 1e-6) == ["runs/0/per_category/a/aupro: committed 0.5, re-run 0.52"]
    assert compare(committed, rerun, 0.05) == []
    del rerun["runs"][0]["per_category"]["a"]["pixel_ap"]
    assert compare(committed, rerun, 0.05) == ["runs/0/per_category/a/pixel_ap: only in the committed file"]


def test_approximate_bank_search_matches_exact_search_when_it_visits_every_row():
    """The bank-search benchmark's faiss banks answer like the exact search when nothing is
    left out (every IVF list probed; an HNSW graph searched wider than the bank), and its
    verdict applies both halves of the rule."""
    pytest.importorskip("faiss")
    import torch

    from benchmarks.bank_search import FaissBank, build_index, verdict
    from costfilter.bank.knn import nearest

    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(600, 16, generator=g), torch.randn(50, 16, generator=g)
    exact = nearest(queries, bank)[0]
    for kind in ("ivf", "hnsw"):
        index = build_index(kind, bank.numpy(), seed=0)
        if kind == "ivf":
            index.nprobe = index.nlist
        else:
            index.hnsw.efSearch = len(bank)
        assert torch.allclose(FaissBank(bank, index).distances(queries), exact, atol=1e-4)

    def row(search, param, p_auroc, ratio):
        return {"search": search, "param": param, "pixel_auroc": p_auroc,
                "throughput": {"model_over_backbone": ratio}}

    sets = {"a": {"rows": [row("exact", 4096, 0.80, 0.9), row("hnsw", 16, 0.817, 0.5), row("ivf", 1, 0.816, 0.8)]},
            "b": {"rows": [row("exact", 4096, 0.90, 0.9), row("hnsw", 16, 0.90, 0.9), row("ivf", 1, 0.90, 0.9)]}}
    v = verdict(sets, {"per_set": {"a": {"pixel_auroc": 0.82}, "b": {"pixel_auroc": 0.90}}})
    passes = {k: x["passes"] for k, x in v["variants"].items()}
    # exact: 0.01 short of the full bank; HNSW: close enough but too slow; IVF: both
    assert passes == {"exact, bank 4096": False, "HNSW ef 16": False, "IVF nprobe 1": True}
    assert v["chosen"] == "IVF nprobe 1"


def test_image_size_add_keeps_measured_sets_and_names_their_commits(tmp_path, monkeypatch):
    """``--add`` runs only the sets the file lacks; each set keeps the commit it was measured at,
    and the table says when the sets come from different runs."""
    import benchmarks.image_size as bench

    root = make_mvtec(tmp_path / "data", categories=("alpha", "beta"))
    trial = {"size": 256, "images_per_s": 50.0, "allowed": True, "image_auroc": 0.9, "pixel_ap": 0.5, "aupro": 0.6}
    row = {"sizes": {"256": {"mean": {"image_auroc": 0.9, "pixel_ap": 0.4, "aupro": 0.7}, "fit_s": 3.0,
                             "throughput": {"model_images_per_s": 40.0, "backbone_images_per_s": 50.0}}},
           "auto": {"size": 256, "reference_images_per_s": 50.0, "floor": 0.4, "held_out": 2, "trials": [trial]}}
    old = {"benchmark": "image_size", "seed": 0, "sizes": [256], "speed_floor": 0.4, "reference_size": 256,
           "rows": {"alpha": row}, "environment": {"git_commit": "a" * 40, "cpu_count": 2}}
    out = tmp_path / "image_size.json"
    out.write_text(json.dumps(old))
    ran: list[str] = []
    monkeypatch.setattr(bench, "run_child", lambda kind, spec, tag: ran.append(tag) or (
        row["auto"] if kind == "image_size_auto" else row["sizes"]["256"]))
    monkeypatch.setattr(bench, "environment", lambda: {"git_commit": "b" * 40, "cpu_count": 4})
    p = bench.run(out, root, [256], add=True, force=True)
    assert ran == ["beta 256", "beta auto"]  # alpha was kept, not run again
    assert p["rows"]["alpha"]["measured_with"] == {"git_commit": "a" * 40, "cpu_count": 2}
    assert p["rows"]["beta"]["measured_with"]["git_commit"] == "b" * 40
    assert f"alpha at `{'a' * 12}`; beta at `{'b' * 12}`" in bench.table(p)
    with pytest.raises(SystemExit, match="sizes"):
        bench.run(out, root, [256, 320], add=True, force=True)
