"""A station's watchdog: every thread it depends on — each source, each sink's sender and the
model thread — is checked every second for having died or stalled (no sign of life for
``watchdog_s`` beyond its own time-outs). A problem turns ``/health`` red and is sent to the
sinks as an ``alarm`` message (once when it starts, once when it clears). The same thread sends
the audit trail's head to the sinks every ``anchor_s`` when it moved (:mod:`..serve.audit`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from .. import model_thread
from ..serve.audit import head
from ..serve.inspection import Inspector
from ..serve.store import utc_now

log = logging.getLogger("costfilter.station")


class Watchdog:
    """Checks ``sources`` and ``deliverers`` (and the model thread) every ``tick_s``;
    ``problems`` maps a thread's name to why it is not healthy."""

    def __init__(self, inspector: Inspector, sources: Sequence[Any], deliverers: Sequence[Any], *,
                 watchdog_s: float, anchor_s: float, backoff_max_s: float, tick_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.inspector, self.sources, self.deliverers = inspector, list(sources), list(deliverers)
        self.watchdog_s, self.anchor_s, self.backoff_max_s, self.tick_s = watchdog_s, anchor_s, backoff_max_s, tick_s
        self.clock = clock
        self.problems: dict[str, str] = {}
        self._probe: Future[None] | None = None
        self._probe_at = 0.0
        self._anchored: tuple[int, str] | None = None
        self._anchor_at = clock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="station-watchdog", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.check()
                self.anchor()
            except Exception as exc:  # noqa: BLE001 - the watchdog itself must not die of a database error
                log.warning("watchdog: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def check(self) -> dict[str, str]:
        """Look at every thread once; raise and clear alarms; returns the current problems."""
        now = self.clock()
        found: dict[str, str] = {}
        for s in self.sources:
            if not s.thread.is_alive():
                if not s.stopping.is_set() and not s.state.startswith("finished"):
                    found[f"source {s.name}"] = f"its thread ended ({s.state})"
            elif now - s.alive_at > self.watchdog_s:
                found[f"source {s.name}"] = f"stalled: no sign of life for {now - s.alive_at:.0f} s"
        for d in self.deliverers:
            allowed = self.watchdog_s + d.sink_timeout() + self.backoff_max_s
            if not d.thread.is_alive():
                if not d.stopping.is_set():
                    found[f"sink {d.sink.name}"] = f"its sending thread ended ({d.state})"
            elif now - d.alive_at > allowed:
                found[f"sink {d.sink.name}"] = f"stalled: no sign of life for {now - d.alive_at:.0f} s"
        model = self._model(now)
        if model:
            found["model"] = model
        for name, why in found.items():
            if name not in self.problems:
                self._alarm(name, why, raised=True)
        for name, why in self.problems.items():
            if name not in found:
                self._alarm(name, why, raised=False)
        self.problems = found
        return found

    def _model(self, now: float) -> str | None:
        """The model thread answers a no-op within ``watchdog_s``, or it is stalled."""
        if self._probe is None or self._probe.done():
            self._probe, self._probe_at = model_thread.submit(lambda: None), now
            return None
        waited = now - self._probe_at
        return f"stalled: busy with one job for {waited:.0f} s" if waited > self.watchdog_s else None

    def _alarm(self, name: str, why: str, *, raised: bool) -> None:
        text = f"{name}: {why}" if raised else f"{name}: recovered (was: {why})"
        (log.error if raised else log.warning)("watchdog: %s", text)
        ins = self.inspector
        key = f"alarm-{int(time.time() * 1000)}-{abs(hash(name)) % 10**8}"
        payload = {"kind": "alarm", "key": key, "station": ins.station, "subject": name, "state":
                   "raised" if raised else "cleared", "message": text,
                   "timestamp": utc_now().isoformat(timespec="milliseconds")}
        try:
            ins.notify(key, payload)
        except Exception as exc:  # noqa: BLE001 - logged above either way
            log.warning("watchdog: the alarm could not be stored (%s)", str(exc).splitlines()[0])

    def anchor(self, force: bool = False) -> tuple[int, str] | None:
        """Every ``anchor_s`` (or now, ``force``): the audit trail's head to every sink, when it
        moved since the last one sent. Returns what was sent."""
        if not self.anchor_s and not force:
            return None
        now = self.clock()
        if not force and now - self._anchor_at < self.anchor_s:
            return None
        self._anchor_at = now
        ins = self.inspector
        seq, h = head(ins.store.engine)
        if (seq, h) == self._anchored or seq == 0 or not ins.sinks:
            return None
        payload = {"kind": "anchor", "key": f"anchor-{seq}", "station": ins.station, "seq": seq, "hash": h,
                   "anchor": f"{seq}:{h}", "timestamp": utc_now().isoformat(timespec="milliseconds")}
        ins.notify(f"anchor-{seq}", payload)
        self._anchored = (seq, h)
        return seq, h
