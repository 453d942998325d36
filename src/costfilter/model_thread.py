"""One thread for a long-running process's model work (the service, the station).

Why it exists: PyTorch's CPU ops run on GNU OpenMP, which keeps a pool of worker threads for
every thread that has run a parallel op. Once two threads hold such pools, libgomp counts more
threads than CPUs and cuts the spin-wait at each barrier to a few dozen turns, so every op's
barrier sleeps and wakes through the kernel. Batches of 32 hide this; one image at a time does
not. Measured on this workplace's 2-core CPU (memory bank, metal_plate, batch 1): the backbone
took 6.3 ms on the thread that loaded the model and 15 ms on any other thread once the first had
run an op, and the service's model stage 27 ms against 14 ms in process. ``OMP_WAIT_POLICY``
does not help: ``ACTIVE`` keeps the idle pool spinning on a core, ``PASSIVE`` makes every
barrier sleep, on every thread.

So a service loads its model and scores every image on one thread (:func:`run`), and long jobs
that must not hold inspections up (teaching a new version) run on a thread of their own that
ends with the job (:func:`run_apart`), taking its pool with it. Standard library only: the CLI
imports this without torch.

A second setting serves one-image-at-a-time processes (:func:`spin_for_service`): after each
parallel op libgomp's workers spin, by default 300,000 turns (about 3.5 ms here), before they
sleep. Batches never notice; a request does: after the model's last op the worker burns the
second core while the request draws, encodes its PNGs, syncs its files and answers.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

#: the model thread's name (its ident is known once it has run something)
NAME = "costfilter-model"

_start = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_ident: int | None = None


def _enter(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    global _ident
    _ident = threading.get_ident()
    return fn(*args, **kwargs)


def on_model_thread() -> bool:
    """Whether the caller is the model thread."""
    return threading.get_ident() == _ident


def submit(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
    """``fn(*args, **kwargs)`` queued for the model thread (started on first use), without
    waiting: for an event loop, which awaits the future instead of blocking a thread on it."""
    global _executor
    with _start:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=NAME)
    return _executor.submit(_enter, fn, args, kwargs)


def run(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on the process's model thread (started on first use): its result,
    or its exception raised here. Called from the model thread itself, ``fn`` runs at once (so a
    job running there may call this again without waiting for itself)."""
    if on_model_thread():
        return fn(*args, **kwargs)
    return submit(fn, *args, **kwargs).result()


def run_apart(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on a new thread that ends when it returns (its OpenMP pool goes
    with it), waiting for it: for long model jobs that inspections must not queue behind."""
    out: dict[str, Any] = {}

    def job() -> None:
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            out["error"] = exc

    t = threading.Thread(target=job, name="costfilter-job", daemon=True)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]  # type: ignore[no-any-return]


#: libgomp spin-wait turns for a service: a third of its default. Measured on this workplace's
#: 2-core CPU (memory bank, metal_plate, service p50): default 29.2 ms; 100,000 and 10,000 turns
#: 26.4-26.9 ms with the model's own time unchanged; 3,000 turns slowed the model by 3 ms (its
#: workers slept between ops) and 0 doubled it. A third keeps a margin for CPUs whose spin turn
#: is shorter than this one's.
SERVICE_SPINCOUNT = "100000"


def spin_for_service() -> bool:
    """Shorten libgomp's spin-wait (``GOMP_SPINCOUNT``) for a process that scores one image at
    a time (``serve``, ``watch``). libgomp reads it when torch loads, so this must run before
    torch is imported; returns False when too late. A value the user set is kept."""
    if "torch" in sys.modules:
        return False
    os.environ.setdefault("GOMP_SPINCOUNT", SERVICE_SPINCOUNT)
    return True
