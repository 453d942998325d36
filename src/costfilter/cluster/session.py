"""Joining a Ray cluster, or starting a local one, for the length of one command."""

from __future__ import annotations

import logging
import os
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
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise CostfilterError(f"cannot reach the Ray cluster at {address or 'a new local instance'} "
                              f"({str(exc).splitlines()[0]})") from None
    try:
        yield
    finally:
        ray.shutdown()
