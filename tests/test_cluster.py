"""``--engine ray``: batch scoring and per-category fitting on a local Ray cluster that the tests
start once (2 CPUs, no network), and the sources an archive job reads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import make_mvtec, small_config

from costfilter.cli import main
from costfilter.errors import CostfilterError
from costfilter.provenance import file_sha256
from costfilter.sources import expand_sources, is_uri, read_bytes

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray")
    root = make_mvtec(tmp / "data", categories=("alpha", "beta"), n_good=5, n_bad=5)
    cfg = tmp / "cfg.yaml"
    cfg.write_text(small_config().to_yaml())
    ckpt = tmp / "alpha.ckpt"
    r = CliRunner().invoke(main, ["fit", str(root), "-c", "alpha", "--out", str(ckpt), "--config", str(cfg), "-q"])
    assert r.exit_code == 0, r.output
    return tmp, root, cfg, ckpt


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def table(out: Path) -> dict[str, dict]:
    return {r["image"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}


def test_ray_scores_equal_the_local_path(cluster, model):
    tmp, root, _, ckpt = model
    images = [root / "alpha" / "test" / "good", root / "alpha" / "test" / "spot"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # each actor runs one thread; the backbone rounds per thread count
    try:
        local = run("predict", ckpt, *images, "--out", tmp / "local", "-q")
    finally:
        torch.set_num_threads(threads)
    assert local.exit_code == 0, local.output
    r = run("predict", ckpt, *images, "--engine", "ray", "--actors", "2", "--out", tmp / "ray", "--save-maps", "-q")
    assert r.exit_code == 0, r.output
    assert "10 scored, 0 already in the results, 0 errors" in r.output
    rows = table(tmp / "ray")
    expected = [json.loads(line) for line in (tmp / "local" / "results.jsonl").read_text().splitlines()]
    assert sorted(rows) == sorted(e["image"] for e in expected)
    model_sha = file_sha256(ckpt)
    for e in expected:
        row = rows[e["image"]]
        assert abs(row["score"] - e["score"]) <= 1e-5
        assert row["decision"] == e["decision"]
        assert json.loads(row["regions"]) == e["regions"]
        assert (row["n_regions"], row["defect_area_pct"]) == (e["n_regions"], e["defect_area_pct"])
        assert row["sha256"] == file_sha256(e["image"]) and row["model_sha256"] == model_sha
        assert row["error"] is None
        assert (tmp / "ray" / row["overlay"]).is_file() and (tmp / "ray" / row["mask"]).is_file()
    assert sum(e["decision"] == "reject" for e in expected) == 5
    record = json.loads((tmp / "ray" / "run-record.json").read_text())
    assert record["engine"] == "ray" and record["inputs"]["count"] == 10 and record["model_sha256"] == model_sha
    assert not (tmp / "ray" / ".parts").exists()


def test_a_killed_job_resumes_without_scoring_anything_twice(cluster, model):
    from costfilter.distributed.inference import predict_on_ray

    tmp, root, _, ckpt = model
    paths = expand_sources([str(root / "alpha" / "test")])
    out = tmp / "resumed"

    def die(store):  # the driver is killed right after its first part file is on disk
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_on_ray(ckpt, paths, out, model_sha256=file_sha256(ckpt), batch_size=2, flush_rows=2,
                       progress=False, on_flush=die)
    parts = list((out / ".parts").glob("*.parquet"))
    assert len(parts) == 1 and not (out / "results.parquet").exists()
    first = pq.read_table(parts[0]).num_rows
    assert 2 <= first < len(paths)
    (out / ".parts" / ".part-x.parquet.tmp").write_bytes(b"half a file")  # an atomic write cut short
    r = run("predict", ckpt, root / "alpha" / "test", "--engine", "ray", "--out", out, "-q")
    assert r.exit_code == 0, r.output
    assert f"{len(paths) - first} scored, {first} already in the results" in r.output
    assert sorted(table(out)) == sorted(paths)
    # A rerun scores only a file replaced under the same name.
    replaced = Path(paths[0])
    replaced.write_bytes((root / "alpha" / "test" / "spot" / "000.png").read_bytes() if "good" in paths[0]
                         else (root / "alpha" / "test" / "good" / "000.png").read_bytes())
    third = run("predict", ckpt, root / "alpha" / "test", "--engine", "ray", "--out", out, "-q")
    assert f"1 scored, {len(paths) - 1} already in the results" in third.output
    assert table(out)[paths[0]]["sha256"] == file_sha256(replaced)


def test_bad_images_become_error_rows(cluster, model):
    tmp, root, _, ckpt = model
    bad = tmp / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    listing = bad / "list.txt"
    good = root / "alpha" / "test" / "good" / "000.png"
    listing.write_text(f"{good}\nbroken.png\n{bad / 'gone.png'}\n# a comment\n")
    r = run("predict", ckpt, listing, "--engine", "ray", "--out", tmp / "bad-out", "-q")
    assert r.exit_code == 1, r.output  # the rest are scored; the status says some were not
    assert "1 scored, 0 already in the results, 2 errors" in r.output
    rows = table(tmp / "bad-out")
    assert rows[str(good)]["error"] is None
    assert rows[str(bad / "broken.png")]["decision"] == "error"
    assert "broken.png" in rows[str(bad / "broken.png")]["error"]
    assert "gone.png" in rows[str(bad / "gone.png")]["error"] and rows[str(bad / "gone.png")]["sha256"] is None


def test_an_output_folder_of_another_model_or_of_other_files_is_refused(cluster, model):
    tmp, root, cfg, ckpt = model
    other = tmp / "other.ckpt"
    assert run("fit", root, "-c", "beta", "--out", other, "--config", cfg, "-q").exit_code == 0
    image = root / "alpha" / "test" / "good" / "000.png"
    assert run("predict", ckpt, image, "--engine", "ray", "--out", tmp / "mixed", "-q").exit_code == 0
    r = run("predict", other, image, "--engine", "ray", "--out", tmp / "mixed", "-q")
    assert r.exit_code == 2 and "holds results of another model" in r.output
    (tmp / "busy").mkdir()
    (tmp / "busy" / "notes.txt").write_text("mine")
    r = run("predict", ckpt, image, "--engine", "ray", "--out", tmp / "busy", "-q")
    assert r.exit_code == 2 and "not empty" in r.output
    r = run("predict", ckpt, image, "--out", tmp / "x", "--save-maps", "-q")
    assert r.exit_code == 2 and "--engine ray" in r.output


def test_fit_per_category_on_ray_fits_every_category(cluster, model):
    tmp, root, cfg, _ = model
    out = tmp / "per-category"
    r = run("fit", root, "--per-category", "--engine", "ray", "--config", cfg, "--out", out, "-q")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((out / "summary.csv").read_text().splitlines()))
    assert [row["category"] for row in rows] == ["alpha", "beta"]
    for row in rows:
        assert row["images"] == "8" and row["error"] == "" and float(row["fit_s"]) > 0
        assert row["heldout_good"] == "5" and 0 <= float(row["heldout_false_reject"]) <= 1
        assert row["sha256"] == file_sha256(out / f"{row['category']}.ckpt")
        p = run("predict", out / f"{row['category']}.ckpt", root / row["category"] / "test" / "spot", "--out",
                tmp / f"p-{row['category']}", "-q")
        assert p.exit_code == 0 and "5 reject" in p.output
    refused = run("fit", root, "--per-category", "--config", cfg, "--out", out, "-q")
    assert refused.exit_code == 2 and "already exists" in refused.output


def test_sources_globs_lists_and_uris(tmp_path):
    root = make_mvtec(tmp_path / "d", n_train=2, n_good=2, n_bad=1)
    train = sorted(str(p) for p in (root / "alpha" / "train" / "good").iterdir())
    assert expand_sources([str(root / "alpha" / "train" / "good" / "*.png")]) == train
    (tmp_path / "l.csv").write_text("image,note\n" + "".join(f"{Path(p).relative_to(tmp_path)},x\n" for p in train))
    assert expand_sources([str(tmp_path / "l.csv")]) == train
    assert is_uri("s3://bucket/x.png") and not is_uri("C://x") and not is_uri("plain/path.png")
    uri = (root / "alpha" / "test").as_uri()
    found = expand_sources([uri])
    assert len(found) == 3 and all(f.startswith("file://") for f in found)
    fsspec = pytest.importorskip("fsspec")  # a scheme pyarrow lacks goes through fsspec
    memory = fsspec.filesystem("memory")
    memory.pipe("/shots/a.png", Path(train[0]).read_bytes())
    memory.pipe("/shots/notes.txt", b"not an image")
    assert expand_sources(["memory://shots"]) == ["memory:///shots/a.png"]
    assert read_bytes("memory:///shots/a.png") == Path(train[0]).read_bytes()
    assert len(expand_sources([str(root / "alpha")])) == 6  # folders are searched recursively (the mask too)
    with pytest.raises(CostfilterError, match="no images found"):
        expand_sources([str(tmp_path / "nothing-*.png")])
    with pytest.raises(CostfilterError, match="file not found"):
        expand_sources([str(tmp_path / "missing")])


def test_gpus_per_actor_on_a_cluster_without_gpus_is_one_line(cluster, model):
    tmp, root, _, ckpt = model
    if ray.cluster_resources().get("GPU", 0):
        pytest.skip("this cluster has GPUs")
    image = root / "alpha" / "test" / "good" / "000.png"
    r = run("predict", ckpt, image, "--engine", "ray", "--gpus-per-actor", "1", "--out", tmp / "gpu", "-q")
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == ["error: --gpus-per-actor 1: the Ray cluster has 0 GPU(s)"]
    assert not (tmp / "gpu").exists()  # refused before anything was written
