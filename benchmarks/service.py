"""``costfilter serve`` in a child process on the loopback interface, for the load-test benchmark
and the tests: a free port, a server started and waited for."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    import socket

    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def start_server(model: Path | None, store: Path, port: int, extra_args: Sequence[str] = (),
                 env_extra: dict[str, str] | None = None, station: Path | None = None) -> Any:
    """``costfilter serve`` on the loopback interface only, returned once /health answers; with
    ``station`` (a station file, which names its own model and store) ``serve --station``, its log
    in ``store``."""
    import os
    import subprocess
    import sys

    import httpx

    store.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **(env_extra or {}))
    with open(store / "server.log", "ab") as log:
        what = ["--station", str(station)] if station is not None else [str(model), "--store", str(store)]
        proc = subprocess.Popen([sys.executable, "-m", "costfilter.cli", "serve", *what, "--host", LOOPBACK,
                                 "--port", str(port), *extra_args], stdout=log, stderr=log, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(store / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"http://{LOOPBACK}:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not start in 120 s")
