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
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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


def run(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on the process's model thread (started on first use): its result,
    or its exception raised here. Called from the model thread itself, ``fn`` runs at once (so a
    job running there may call this again without waiting for itself)."""
    global _executor
    if on_model_thread():
        return fn(*args, **kwargs)
    with _start:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=NAME)
    return _executor.submit(_enter, fn, args, kwargs).result()


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
