"""Joining a Ray cluster, or starting a local one, for the length of one command."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import CostfilterError


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Join the cluster at ``address`` (None: start a local one) for the block; a Ray the caller
    had already started (a notebook, the tests) is used and left running."""
    try:
        import ray
    except ImportError:
        raise CostfilterError("--engine ray needs Ray: pip install 'costfilter[ray]'") from None
    # Ray Data logs every execution at INFO; our own bar shows progress. Users may set the level.
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
    if ray.is_initialized():
        yield
        return
    reaper = _start_reaper() if address is None else None
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise CostfilterError(f"cannot reach the Ray cluster at {address or 'a new local instance'} "
                              f"({str(exc).splitlines()[0]})") from None
    try:
        yield
    finally:
        ray.shutdown()
        if reaper is not None:
            reaper.kill()
            reaper.wait()


#: Watches the driver from a child process of its own. A local cluster's processes are the
#: driver's descendants; a killed driver (SIGKILL, OOM) cannot shut them down, and some of Ray's
#: agents then live on under PID 1 for minutes. The reaper notes the driver's descendants while
#: it lives (with their start times, so a reused pid is never hit) and ends them once it is gone.
_REAPER = r"""
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
driver, me = os.getppid(), os.getpid()

def processes():
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            kids.setdefault(int(fields[1]), []).append((int(d), fields[19]))
    return kids

def started(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None

seen = {}
while os.getppid() == driver:
    kids, todo = processes(), [driver]
    while todo:
        for pid, start in kids.get(todo.pop(), []):
            if pid != me and pid not in seen:
                seen[pid] = start
                todo.append(pid)
    time.sleep(0.5)
for sig in (signal.SIGTERM, signal.SIGKILL):
    for pid, start in seen.items():
        if started(pid) == start:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
    time.sleep(2)
"""


def _start_reaper() -> subprocess.Popen | None:
    """The watchdog of :data:`_REAPER` (Linux only: it reads ``/proc``)."""
    if not os.path.isdir("/proc/self"):
        return None
    return subprocess.Popen([sys.executable, "-c", _REAPER], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
