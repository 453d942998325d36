"""Ray past one machine (issue 47): batch scoring on 1, 2 and 3 nodes that share no disk.

    sudo python -m benchmarks.ray_cluster [--category ../shared/data/magnetic_tile/magnetic_tile] [--images 240]

Each node is a Ray node in its own network namespace (:mod:`.netns_cluster`), capped by a cgroup
to ``--node-cpu`` of a core so that three of them mean something on this 2-core machine; the
workers cannot see the data or the output (private mount namespaces). The default memory bank is
fitted on the category's good training images; ``--images`` of its test images are scored by
``costfilter predict --engine ray`` from a driver on the head's network, one actor per node.

Reported per node count: images/s, the driver's own time per image (receiving rows, writing
results; the files are read by Ray tasks on the driver's node, not by the driver), and the
backbone alone at the same CPU share for scale. From the per-node rate ``r`` and the driver's
cost ``c`` the driver saturates at about ``1 / (r · c)`` nodes: the projected ceiling.

Writes benchmarks/results/ray_cluster.json (needs root and the [ray] extra).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from costfilter.api import Detector
from costfilter.config import DetectorConfig
from costfilter.data import load_dataset, split_of
from costfilter.tables import format_table

from .common import write_json
from .netns_cluster import NetnsCluster, unavailable


def run(json_out: Path, category: Path, *, n_images: int, node_cpu: float, nodes: tuple[int, ...], seed: int,
        force: bool) -> dict[str, Any]:
    why = unavailable()
    if why:
        raise SystemExit(f"cannot build the namespaced cluster here: {why}")
    samples = load_dataset(category)
    test = sorted(split_of(samples, "test"), key=lambda s: str(s.path))
    cfg = DetectorConfig(seed=seed)
    t0 = time.perf_counter()
    det = Detector(cfg, progress=False).fit(samples)
    fit_s = time.perf_counter() - t0
    rows = []
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        ckpt = tmp / "model.ckpt"
        det.save(ckpt)
        images = tmp / "images"
        images.mkdir()
        for i in range(n_images):  # copies, not links: the workers must not reach the originals either
            src = test[i % len(test)].path
            shutil.copy(src, images / f"{i:05d}{src.suffix}")
        for n in nodes:
            cluster = NetnsCluster(f"bench{n}", workers=n - 1, cpus=1, hidden=[tmp, category.resolve()],
                                   cpu_quota=node_cpu)
            try:
                t = time.perf_counter()
                cluster.start()
                up_s = time.perf_counter() - t
                r = cluster.driver(["-c", DRIVER, str(ckpt), str(images), str(tmp / f"out{n}"), cluster.address,
                                    str(n)], timeout=1800)
                if r.returncode:
                    raise RuntimeError(f"predict on {n} nodes failed: {r.stderr[-2000:]}")
                job = json.loads(r.stdout.strip().splitlines()[-1])
                backbone = _backbone_rate(cluster, ckpt) if n == nodes[0] else rows[0]["backbone_images_per_s"]
            finally:
                cluster.stop()
            scored = job["scored"]
            # The steady rate: over the second half of the rows, when every actor has long started
            # (actors start at different times; each loads torch and the model at its CPU share).
            half = next((t, k) for t, k in job["arrivals"] if k >= scored / 2)
            steady = (scored - half[1]) / (job["seconds"] - half[0])
            rows.append({"nodes": n, "images": scored, "seconds": job["seconds"], "first_rows_s": job["first_rows_s"],
                         "images_per_s": scored / job["seconds"], "steady_images_per_s": steady,
                         "driver_loop_s": job["driver_s"], "driver_cpu_s": job["driver_cpu_s"],
                         "driver_cpu_ms_per_image": 1000 * job["driver_cpu_s"] / scored,
                         "cluster_start_s": up_s, "cpu_capped": cluster.capped, "backbone_images_per_s": backbone})
            print(_line(rows[-1]), flush=True)
    payload = {"benchmark": "ray_cluster", "seed": seed, "category": str(category), "fit_s": fit_s,
               "node_cpu": node_cpu, "images": n_images, "runs": rows, "projection": projection(rows)}
    write_json(json_out, payload, force)
    print(table(payload))
    return payload


def projection(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the driver saturates. Its CPU seconds over a run (from the first rows on) are fitted,
    least squares over the runs, as ``a · seconds + b · images``: ``a`` the share of a core it
    spends while a job runs whatever its rate (Ray Data's executor polling), ``b`` its CPU per
    image (receiving, writing). One core is used up at ``(1 − a) / b`` images/s, which at the
    largest run's steady rate per node is that many nodes."""
    import numpy as np

    span = [r["seconds"] - r["first_rows_s"] for r in rows]
    x = np.array([[t, r["images"]] for t, r in zip(span, rows)], dtype=float)
    y = np.array([r["driver_cpu_s"] for r in rows], dtype=float)
    (a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
    per_node = rows[-1]["steady_images_per_s"] / rows[-1]["nodes"]
    ceiling = (1 - a) / b if b > 0 else float("inf")
    return {"driver_core_share_while_running": float(a), "driver_cpu_ms_per_image": float(1000 * b),
            "driver_images_per_s": float(ceiling), "images_per_s_per_node": per_node,
            "nodes_at_saturation": float(ceiling / per_node),
            "how": "the driver's CPU seconds (from the first rows on) fitted over the runs as a·seconds + b·images "
                   "(least squares); one core is used up at (1 − a)/b images/s; divided by the largest run's "
                   "steady images/s per node"}


#: the driver, on the head's network: predict_on_ray as the CLI runs it, its timings as JSON
DRIVER = """
import json, sys
from pathlib import Path
from costfilter.distributed.session import ray_session
from costfilter.distributed.inference import predict_on_ray
from costfilter.provenance import file_sha256
from costfilter.sources import expand_sources
ckpt, images, out, address, actors = sys.argv[1:6]
with ray_session(address):
    run = predict_on_ray(ckpt, expand_sources([images]), Path(out), model_sha256=file_sha256(ckpt),
                         actors=int(actors), progress=False)
print(json.dumps({"scored": run.scored, "errors": run.errors, "seconds": run.seconds, "first_rows_s": run.first_rows_s,
                  "driver_s": run.driver_s, "driver_cpu_s": run.driver_cpu_s, "arrivals": run.arrivals}))
"""


def _backbone_rate(cluster: NetnsCluster, ckpt: Path) -> float:
    """The backbone alone, batch 8, on one Ray task on the head node (its CPU share)."""
    code = f"""
import time, torch
from costfilter.api import Detector
@ray.remote(num_cpus=1)
def rate():
    torch.set_num_threads(1)
    det = Detector.load({str(ckpt)!r}, progress=False)
    x = torch.rand(8, 3, det.config.features.image_size, det.config.features.image_size)
    bb = det.model.features.backbone
    with torch.inference_mode():
        bb(x)
        t = time.perf_counter()
        for _ in range(5):
            bb(x)
    return 40 / (time.perf_counter() - t)
print(ray.get(rate.remote()))
"""
    return float(cluster.python(code, timeout=600).strip().splitlines()[-1])


def _line(r: dict[str, Any]) -> str:
    return (f"{r['nodes']} node(s): {r['images_per_s']:.1f} images/s over the job, {r['steady_images_per_s']:.1f} "
            f"from the first rows on ({r['first_rows_s']:.0f} s to them); driver CPU {r['driver_cpu_ms_per_image']:.1f} "
            f"ms/image; cluster up in {r['cluster_start_s']:.0f} s; backbone alone {r['backbone_images_per_s']:.1f} "
            f"images/s per node{'' if r['cpu_capped'] else ' (NO CPU cap applied)'}")


def table(p: dict[str, Any]) -> str:
    """The README table."""
    one = p["runs"][0]["steady_images_per_s"]
    rows = [[r["nodes"], f"{r['images_per_s']:.1f}", f"{r['first_rows_s']:.0f}", f"{r['steady_images_per_s']:.1f}",
             f"{r['steady_images_per_s'] / one:.2f}×", f"{r['driver_cpu_ms_per_image']:.1f}",
             f"{r['backbone_images_per_s']:.1f}"] for r in p["runs"]]
    pr = p["projection"]
    text = format_table(["nodes", "images/s (whole job)", "s to first rows", "images/s, second half", "vs 1 node",
                         "driver CPU ms / image", "backbone alone / node (images/s)"], rows)
    return (text + f"\n\nEach node capped at {p['node_cpu']:g} of a core; {p['images']} images. \"Images/s, second half\" is "
            f"the rate over the second half of the rows, when every actor has started. The driver's CPU, fitted "
            f"over the runs: {100 * pr['driver_core_share_while_running']:.0f} % of a core while a job runs, plus "
            f"{pr['driver_cpu_ms_per_image']:.2f} ms per image. One core of it is used up at "
            f"{pr['driver_images_per_s']:.0f} images/s: at {pr['images_per_s_per_node']:.1f} images/s per node, "
            f"**about {pr['nodes_at_saturation']:.0f} nodes**.")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--category", type=Path, default=Path("../shared/data/magnetic_tile/magnetic_tile"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/ray_cluster.json"))
    ap.add_argument("--images", type=int, default=480)
    ap.add_argument("--node-cpu", type=float, default=0.5, help="share of a core each node may use")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: network and mount namespaces, cgroups")
    run(a.json, a.category, n_images=a.images, node_cpu=a.node_cpu, nodes=(1, 2, 3), seed=a.seed, force=a.force)
