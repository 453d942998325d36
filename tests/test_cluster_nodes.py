"""``--engine ray`` on a cluster of three nodes that share no disk (:mod:`netns_cluster`): a head
and two workers, each in its own network namespace, the workers in private mount namespaces where
this test's folders (data, model, output) are hidden. The driver runs on the head's network.

Scores equal a local run's; a worker node SIGKILLed in the middle of ``predict`` or of a
per-category ``fit`` costs nothing (every image scored exactly once, every category fitted once);
a driver killed mid-job resumes on the rerun without scoring a finished image again."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import make_mvtec, small_config

from benchmarks.netns_cluster import NetnsCluster, unavailable
from costfilter.cli import main
from costfilter.provenance import file_sha256

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

WHY = unavailable()
# one cluster for the module, on one test process (two would halve each other's CPUs)
pytestmark = [pytest.mark.skipif(WHY is not None, reason=f"no namespaced cluster here: {WHY}"),
              pytest.mark.xdist_group("netns-cluster")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The data, a model fitted here, a local run's scores, and the cluster (workers blind to all of it)."""
    tmp = tmp_path_factory.mktemp("nodes")
    root = make_mvtec(tmp / "data", categories=("alpha", "beta", "gamma"), n_train=24, n_good=30, n_bad=30)
    cfg = tmp / "cfg.yaml"
    cfg.write_text(small_config().to_yaml())
    ckpt = tmp / "alpha.ckpt"
    r = CliRunner().invoke(main, ["fit", str(root), "-c", "alpha", "--out", str(ckpt), "--config", str(cfg), "-q"])
    assert r.exit_code == 0, r.output
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # each actor runs one thread; the backbone rounds per thread count
    try:
        local = CliRunner().invoke(main, ["predict", str(ckpt), str(root / "alpha" / "test"), "--out",
                                          str(tmp / "local"), "-q"])
    finally:
        torch.set_num_threads(threads)
    assert local.exit_code == 0, local.output
    scores = {json.loads(x)["image"]: json.loads(x)["score"] for x in (tmp / "local" / "results.jsonl").read_text()
              .splitlines()}
    cluster = NetnsCluster(f"{abs(hash(str(tmp))) % 10**6:06d}", workers=2, cpus=2, hidden=[tmp]).start()
    try:
        yield tmp, root, cfg, ckpt, scores, cluster
    finally:
        cluster.stop()


def _table(out: Path) -> list[dict]:
    return pq.read_table(out / "results.parquet").to_pylist()


def _same_scores(rows: list[dict], scores: dict[str, float]) -> None:
    images = [r["image"] for r in rows]
    assert len(images) == len(set(images)) == len(scores), "every image exactly once"
    by_name = {Path(r["image"]).parent.name + "/" + Path(r["image"]).name: r["score"] for r in rows}
    local = {Path(k).parent.name + "/" + Path(k).name: v for k, v in scores.items()}
    assert by_name.keys() == local.keys()
    worst = max(abs(by_name[k] - local[k]) / max(1.0, abs(local[k])) for k in local)
    assert worst <= 1e-6, worst


def _restore(cluster: NetnsCluster, driver: subprocess.Popen, victim: int | None) -> None:
    """After a node-loss test: the driver ended, the lost worker back, the cluster whole again."""
    if driver.poll() is None:
        driver.kill()
    cluster.add_node(victim or 1)
    cluster.wait_nodes(3)


PREDICT = """
import sys, pathlib
from costfilter.distributed.session import ray_session
from costfilter.distributed.inference import predict_on_ray
from costfilter.provenance import file_sha256
from costfilter.sources import expand_sources
ckpt, src, out, marker = sys.argv[1:5]
paths = expand_sources([src])
def flushed(store):
    pathlib.Path(marker).touch()
with ray_session({address!r}):
    run = predict_on_ray(ckpt, paths, pathlib.Path(out), model_sha256=file_sha256(ckpt), actors=3, batch_size=4,
                         flush_rows=4, progress=False, save_maps=True, on_flush=flushed)
print("DONE", run.scored, run.skipped, run.errors)
"""


def test_predict_across_nodes_equals_a_local_run(setup):
    tmp, root, _, ckpt, scores, cluster = setup
    out = tmp / "ray-out"
    r = cluster.driver(["-m", "costfilter.cli", "predict", str(ckpt), str(root / "alpha" / "test"), "--engine", "ray",
                        "--ray-address", cluster.address, "--actors", "3", "--batch-size", "4", "--save-maps",
                        "--out", str(out), "-q"], timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    rows = _table(out)
    _same_scores(rows, scores)
    # the pictures were drawn on the nodes and written here by the driver
    assert all((out / row["overlay"]).is_file() and (out / row["mask"]).is_file() for row in rows)
    record = json.loads((out / "run-record.json").read_text())
    assert record["ray"]["nodes"] == 3


def test_a_worker_node_killed_mid_predict_costs_nothing(setup):
    tmp, root, _, ckpt, scores, cluster = setup
    out, marker = tmp / "killed-node", tmp / "flushed"
    code = PREDICT.format(address=cluster.address)
    victim = None
    driver = subprocess.Popen(cluster.driver_cmd(["-c", code, str(ckpt), str(root / "alpha" / "test"), str(out),
                                                  str(marker)]), env=cluster.env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), driver.communicate()[0][-3000:] if driver.poll() is not None else "no flush"
        victim = next((i for i in (1, 2) if cluster.runs(i, "MapWorker")), None)
        assert victim is not None, "no scoring actor on a worker node"
        cluster.kill_node(victim)
        received = sum(pq.read_table(p).num_rows for p in (out / ".parts").glob("*.parquet"))
        assert received < len(scores), "the job had finished before the node was lost"
        output = driver.communicate(timeout=600)[0]
    finally:
        _restore(cluster, driver, victim)
    assert driver.returncode == 0 and "DONE" in output, output[-3000:]
    _same_scores(_table(out), scores)


def test_a_worker_node_killed_mid_fit_costs_nothing(setup):
    tmp, root, cfg, _, _, cluster = setup
    out = tmp / "per-category"
    args = ["-m", "costfilter.cli", "fit", str(root), "--per-category", "--engine", "ray", "--ray-address",
            cluster.address, "--config", str(cfg), "--out", str(out), "-q"]
    driver = subprocess.Popen(cluster.driver_cmd(args), env=cluster.env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    victim = None
    try:
        deadline = time.monotonic() + 300
        while victim is None and time.monotonic() < deadline and driver.poll() is None:
            for i in (1, 2):  # a worker node in the middle of a fit (Ray names the worker after its task)
                if cluster.runs(i, "fit_packed"):
                    victim = i
                    break
            time.sleep(0.05)
        assert victim is not None, "no fit ran on a worker node"
        cluster.kill_node(victim)
        output = driver.communicate(timeout=600)[0]
    finally:
        _restore(cluster, driver, victim)
    assert driver.returncode == 0, output[-3000:]
    summary = json.loads((out / "summary.json").read_text())["categories"]
    assert [r["category"] for r in summary] == ["alpha", "beta", "gamma"] and not any(r.get("error") for r in summary)
    for r in summary:
        assert file_sha256(out / f"{r['category']}.ckpt") == r["sha256"]
    assert sorted(p.name for p in out.iterdir()) == ["alpha.ckpt", "beta.ckpt", "gamma.ckpt", "summary.csv",
                                                     "summary.json"]


def test_a_killed_driver_resumes_without_scoring_finished_images(setup):
    tmp, root, _, ckpt, scores, cluster = setup
    out, marker = tmp / "driver-killed", tmp / "flushed-2"
    code = PREDICT.format(address=cluster.address)
    driver = subprocess.Popen(cluster.driver_cmd(["-c", code, str(ckpt), str(root / "alpha" / "test"), str(out),
                                                  str(marker)]), env=cluster.env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not marker.exists() and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    kept = sum(pq.read_table(p).num_rows for p in (out / ".parts").glob("*.parquet"))
    assert 0 < kept < len(scores)
    r = cluster.driver(["-m", "costfilter.cli", "predict", str(ckpt), str(root / "alpha" / "test"), "--engine", "ray",
                        "--ray-address", cluster.address, "--actors", "3", "--batch-size", "4", "--out", str(out),
                        "-q"], timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    record = json.loads((out / "run-record.json").read_text())["this_run"]
    assert record["skipped"] == kept and record["scored"] + record["errors"] == len(scores) - kept
    _same_scores(_table(out), scores)

