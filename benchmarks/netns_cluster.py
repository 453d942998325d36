"""A Ray cluster of nodes that share no disk, on one machine: a head and worker nodes, each in a
Linux network namespace of its own with its own address on a private bridge (itself in a
namespace of its own, so nothing reaches the machine's network), and each worker in a private
mount namespace where the driver's folders are hidden behind empty mounts. Any code that still
reads a driver path on a worker fails loudly. Needs root (``ip netns``, ``unshare``, ``mount``).

Used by the tests (``tests/test_cluster_nodes.py``) and the scaling benchmark
(``benchmarks/ray_cluster.py``). Only addresses inside these namespaces are used.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

#: the namespaces' subnet; nodes are .1 (head), .2, .3, …
SUBNET = "10.254.47"
PORT = 6379


def unavailable() -> str | None:
    """Why such a cluster cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (network and mount namespaces)"
    for tool in ("ip", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"needs the {tool} command"
    ray = Path(sys.executable).with_name("ray")
    if not ray.exists():
        return "needs Ray's `ray` command beside this Python (pip install 'costfilter[ray]')"
    probe = f"cfprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], check=False, capture_output=True, text=True)
    if made.returncode:
        return f"cannot make a network namespace ({made.stderr.strip() or made.returncode})"
    subprocess.run(["ip", "netns", "del", probe], check=False, capture_output=True)
    return None


def _run(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, text=True)


class NetnsCluster:
    """``workers`` worker nodes and a head, ``cpus`` logical CPUs each (``cpu_quota``: the share
    of a core each node's processes may use, through a cgroup; None: no cap). ``hidden``: folders
    the workers must not see (the driver's data and output). ``start()`` / ``stop()``."""

    def __init__(self, tag: str, workers: int = 2, *, cpus: int = 2, hidden: list[Path] | tuple[Path, ...] = (),
                 cpu_quota: float | None = None, object_store_mb: int = 150):
        self.tag, self.n_workers, self.cpus = tag[:6], workers, cpus
        self.hidden = [Path(h) for h in hidden]
        self.cpu_quota, self.object_store_mb = cpu_quota, object_store_mb
        self.switch = f"cfsw{self.tag}"
        self.procs: dict[int, subprocess.Popen] = {}
        self.capped = False  # whether the CPU cap could be applied
        self.temp = Path(f"/tmp/cf-ray-{self.tag}")
        self.logs = Path(f"/tmp/cf-ray-logs-{self.tag}")
        # Token authentication, as a real cluster should have it: one token for the head, the
        # workers and every driver (a driver without it is refused)
        self.token = secrets.token_hex(32)
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_DATA_LOG_LEVEL="ERROR",
                        PYTHONUNBUFFERED="1", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        self.env.pop("RAY_ADDRESS", None)

    # ------------------------------------------------------------------ names
    def ns(self, i: int) -> str:
        """Node ``i``'s namespace (0: the head)."""
        return f"cf{self.tag}n{i}"

    def ip(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    @property
    def address(self) -> str:
        return f"{self.ip(0)}:{PORT}"

    # ------------------------------------------------------------------ network
    def _net(self) -> None:
        _run("ip", "netns", "add", self.switch)
        _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.switch, "link", "set", "br0", "up")
        for i in range(self.n_workers + 1):
            self._plug(i)

    def _plug(self, i: int) -> None:
        ns, a, b = self.ns(i), f"cf{self.tag}a{i}", f"cf{self.tag}b{i}"
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        _run("ip", "link", "set", a, "netns", ns)
        _run("ip", "link", "set", b, "netns", self.switch)
        _run("ip", "-n", self.switch, "link", "set", b, "master", "br0")
        _run("ip", "-n", self.switch, "link", "set", b, "up")
        _run("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", a)
        _run("ip", "-n", ns, "link", "set", a, "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")

    # ------------------------------------------------------------------ nodes
    def start(self) -> NetnsCluster:
        self.stop(quiet=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self._net()
        self._node(0)
        self.wait_nodes(1)  # a worker started before the head's GCS answers gives up at once
        for i in range(1, self.n_workers + 1):
            self._node(i)
        self.wait_nodes(self.n_workers + 1)
        return self

    def _node(self, i: int) -> None:
        ray = str(Path(sys.executable).with_name("ray"))
        common = [f"--node-ip-address={self.ip(i)}", f"--num-cpus={self.cpus}", "--disable-usage-stats",
                  f"--object-store-memory={self.object_store_mb * 2**20}", "--block"]
        if i == 0:
            cmd = ["ip", "netns", "exec", self.ns(0), ray, "start", "--head", f"--port={PORT}",
                   "--include-dashboard=false", f"--temp-dir={self.temp}", *common]
        else:
            # A private mount namespace: the driver's folders behind empty mounts, /tmp and a Ray
            # folder of its own (unless the code itself lives under /tmp: then only the folders).
            hide = [h for h in self.hidden if h.exists()]
            import costfilter

            code = (Path(sys.executable).resolve(), Path(costfilter.__file__).resolve())
            own_tmp = not any(Path("/tmp") in p.parents for p in code)
            mounts = [f"mount -t tmpfs -o size=1m cfhidden {shlex.quote(str(h))}" for h in hide]
            if own_tmp:
                mounts.append("mount -t tmpfs cftmp /tmp")
            mounts += [f"mkdir -p {self.temp}", f"mount -t tmpfs cfray {self.temp}",
                       f"exec {ray} start --address={self.address} {' '.join(common)}"]
            script = " && ".join(mounts)
            cmd = ["ip", "netns", "exec", self.ns(i), "unshare", "--mount", "--propagation", "private",
                   "sh", "-c", script]
        group = self._cgroup(i) if self.cpu_quota else None
        if group is not None:  # the node's first process joins the group before it starts anything
            cmd = ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "node", *cmd]
        log = open(self.logs / f"node{i}.log", "ab")  # noqa: SIM115 - held by the node's process
        self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=log, env=self.env, start_new_session=True)

    def _cgroup(self, i: int) -> Path | None:
        """A cgroup (v1 cpu controller) capping node ``i`` at ``cpu_quota`` of a core, or None
        where none can be made (the benchmark then records that no cap was applied)."""
        group = Path(f"/sys/fs/cgroup/cpu/cf-{self.tag}-n{i}")
        try:
            group.mkdir(exist_ok=True)
            (group / "cpu.cfs_period_us").write_text("100000")
            (group / "cpu.cfs_quota_us").write_text(str(int(100000 * self.cpu_quota)))
        except OSError:
            return None
        self.capped = True
        return group

    def driver(self, args: list[str], *, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
        """Run ``python args…`` as a driver on the head node (its network; the machine's disk)."""
        return subprocess.run(self.driver_cmd(args), env=self.env, check=False, capture_output=True, text=True,
                              timeout=timeout, **kw)

    def driver_cmd(self, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(0), sys.executable, *args]

    def python(self, code: str, timeout: float = 120) -> str:
        """Run ``code`` in a fresh Python connected to the cluster, on the head's network; its stdout."""
        prelude = (f"import ray, logging; ray.init(address={self.address!r}, logging_level=logging.ERROR, "
                   "log_to_driver=False)\n")
        r = self.driver(["-c", prelude + code], timeout=timeout)
        if r.returncode:
            raise RuntimeError(f"cluster query failed: {r.stderr[-2000:]}")
        return r.stdout

    def alive_nodes(self) -> int:
        return int(self.python("print(sum(n['Alive'] for n in ray.nodes()))").strip().splitlines()[-1])

    def wait_nodes(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.alive_nodes() == n:
                    return
            except RuntimeError:
                pass
            for i, p in self.procs.items():
                if p.poll() is not None:
                    log = (self.logs / f"node{i}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"Ray node {i} exited: {log}")
            time.sleep(1)
        raise RuntimeError(f"the cluster did not reach {n} nodes in {timeout:.0f} s")

    def runs(self, i: int, title: str) -> bool:
        """Whether a process of node ``i`` has ``title`` in its command line (Ray names its
        workers after what they run, e.g. ``ray::MapWorker(…)``)."""
        for pid in self.pids(i):
            try:
                if title.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return True
            except OSError:
                continue
        return False

    def pids(self, i: int) -> list[int]:
        """Every process in node ``i``'s network namespace (its raylet, its workers, a driver)."""
        r = subprocess.run(["ip", "netns", "pids", self.ns(i)], check=False, capture_output=True, text=True)
        return [int(x) for x in r.stdout.split()]

    def kill_node(self, i: int) -> None:
        """SIGKILL every process of node ``i``, as a pulled cable or an OOM kill of the node would."""
        for _ in range(3):  # a worker forked while we looked
            for pid in self.pids(i):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        if i in self.procs:
            self.procs[i].wait(timeout=10)

    def add_node(self, i: int) -> None:
        """Start node ``i`` again (after :meth:`kill_node`) and wait for it."""
        self._node(i)

    def stop(self, quiet: bool = False) -> None:
        """Kill every node, remove the namespaces, the cgroups and the Ray folders."""
        names = [self.ns(i) for i in range(self.n_workers + 1)]
        for i in range(self.n_workers, -1, -1):
            try:
                self.kill_node(i)
            except (subprocess.SubprocessError, OSError):
                pass
        for ns in [*names, self.switch]:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        for group in Path("/sys/fs/cgroup/cpu").glob(f"cf-{self.tag}-*"):
            try:
                group.rmdir()
            except OSError:
                pass
        shutil.rmtree(self.temp, ignore_errors=True)
        self.procs.clear()
