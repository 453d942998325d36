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

seen, sessions = {}, set()

def scan(roots):
    kids, todo = processes(), list(roots)
    while todo:
        for pid, start in kids.get(todo.pop(), []):
            if pid != me and pid not in seen:
                seen[pid] = start
                todo.append(pid)
                # The session folder, read while the process lives (the raylet names it).
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        args = fh.read().split(b"\0")
                except OSError:
                    continue
                sessions.update(a.split(b"=", 1)[1].decode() for a in args
                                if a.startswith((b"--session_dir=", b"--session-dir=")))

while os.getppid() == driver:
    scan([driver])
    time.sleep(0.5)
scan(list(seen))  # what the driver's descendants started since the last look
# Ray starts its agents and idle workers detached (their parent is PID 1 from the start), so
# they are found by the session folder named on the raylet's command line: in their own
# command line, or among the files they hold open.
inside = tuple(x + "/" for x in sessions)
for d in filter(str.isdigit, os.listdir("/proc")) if sessions else ():
    try:
        with open(f"/proc/{d}/cmdline", "rb") as fh:
            cmd = fh.read().decode(errors="replace")
        links = [os.readlink(f"/proc/{d}/fd/{fd}") for fd in os.listdir(f"/proc/{d}/fd")]
    except OSError:
        continue
    if int(d) != me and (any(x in cmd for x in inside) or any(link.startswith(inside) for link in links)):
        seen.setdefault(int(d), started(int(d)))
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
