"""Delivering the outbox: one thread per sink takes that sink's undelivered messages from the
history database in commit order and sends them one by one; a message counts as delivered only
once the sink acknowledged it, and only then does the next one go. A sink that fails is retried
with exponential back-off (1 s doubling up to a limit), so it catches up, in order, when it
returns; since the messages live in the database, so does a restart or a kill of the service.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ..serve.metrics import Metrics
from ..serve.store import HistoryStore
from . import config as c
from .sinks import Sink, SinkError

log = logging.getLogger("costfilter.station")
FIRST_BACKOFF_S = 1.0


class Deliverer:
    """Sends ``sink``'s messages from ``store`` until stopped; ``state`` says how it goes."""

    def __init__(self, sink: Sink, store: HistoryStore, metrics: Metrics, backoff_max_s: float = c.BACKOFF_MAX_S):
        self.sink, self.store, self.metrics, self.backoff_max_s = sink, store, metrics, backoff_max_s
        self.wake, self.stopping = threading.Event(), threading.Event()
        self.state = "starting"
        self.ok = True
        self.delivered = 0
        self.failures = 0
        #: messages the sink acknowledged whose delivery could not be recorded yet: never sent again
        self.unrecorded: set[int] = set()
        #: last sign of life (monotonic seconds), for the station's watchdog
        self.alive_at = time.monotonic()
        self.thread = threading.Thread(target=self._run, name=f"sink-{sink.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.thread.join(timeout=self.sink_timeout() + 5)
        self.sink.close()

    def sink_timeout(self) -> float:
        return float(getattr(self.sink.cfg, "timeout_s", 5.0))

    def _run(self) -> None:
        backoff = FIRST_BACKOFF_S
        try:
            self.sink.open()
            self.state = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure to open is the sink being down, never the end
            self._down(_reason(exc))
        while not self.stopping.is_set():
            self.alive_at = time.monotonic()
            try:
                batch = self.store.pending(self.sink.name, 100)
            except Exception as exc:  # noqa: BLE001 - the database is down: wait for it, keep the messages
                self._down(f"cannot read the outbox ({str(exc).splitlines()[0]})")
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
                continue
            if not batch:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            for message in batch:
                if self.stopping.is_set():
                    return
                if not self._send(message):
                    self.stopping.wait(backoff)
                    backoff = min(backoff * 2, self.backoff_max_s)
                    break
                backoff = FIRST_BACKOFF_S

    def _send(self, message: dict[str, Any]) -> bool:
        seq = message["seq"]
        if seq not in self.unrecorded:
            try:
                self.sink.send(message["payload"])
            except Exception as exc:
                if not isinstance(exc, SinkError):
                    log.exception("sink %s: unexpected failure sending message %s", self.sink.name, seq)
                reason = _reason(exc)
                self.failures += 1
                self.metrics.sink_failures.labels(self.sink.name).inc()
                self._down(reason)
                try:
                    self.store.mark_failed(seq, reason)
                except Exception as exc2:  # noqa: BLE001 - counting an attempt is not worth stopping for
                    log.debug("sink %s: attempt not counted (%s)", self.sink.name, exc2)
                return False
        # Sent and acknowledged: if this commit is lost (a kill right now), it is sent again —
        # at least once, never lost; the consumer drops the repeated key. While this process
        # lives, a delivery it could not record (the store's disk full) is only recorded again.
        try:
            self.store.mark_delivered(seq)
        except Exception as exc:  # noqa: BLE001 - the database is down: recorded later, not sent again
            self.unrecorded.add(seq)
            self._down(f"cannot record the delivery ({str(exc).splitlines()[0]})")
            return False
        self.unrecorded.discard(seq)
        self.delivered += 1
        self.metrics.delivered.labels(self.sink.name).inc()
        if not self.ok:
            log.warning("sink %s is back; delivering its backlog", self.sink.name)
        self.ok, self.state = True, "ok"
        return True

    def _down(self, reason: str) -> None:
        if self.ok or self.state != f"down: {reason}":
            log.warning("sink %s: %s; retrying with back-off, messages kept", self.sink.name, reason)
        self.ok, self.state = False, f"down: {reason}"


def _reason(exc: BaseException) -> str:
    """One line for a sink's failure: a sink error's own words, anything else with its type."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if isinstance(exc, SinkError) else f"{type(exc).__name__}: {text}"
