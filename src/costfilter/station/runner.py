"""A station: one model, one history store, its sources feeding one inspector, and one
delivering thread per sink. ``costfilter watch`` runs it headless; ``costfilter serve --station``
runs it beside the upload service (same inspector, same store, same outbox)."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from ..decisions import chosen_point
from ..errors import CostfilterError
from ..serve.inspection import Inspector, Scorer, open_scorer
from ..serve.loop import OperatorLoop
from ..serve.metrics import Metrics
from ..serve.store import HistoryStore
from . import config as c
from .outbox import Deliverer
from .sinks import make_sink
from .sources import HotFolder, StreamSource
from .watchdog import Watchdog

log = logging.getLogger("costfilter.station")


def open_detector(cfg: c.StationConfig, sign_key: str | None = None) -> Scorer:
    """The station's model, at its configured operating point."""
    if not cfg.model.is_file():
        raise CostfilterError(f"{cfg.file}: model: {cfg.model} is not a file")
    det = open_scorer(cfg.model, sign_key=sign_key, runtime=cfg.runtime)
    at_operating_point(cfg, det)
    return det


def at_operating_point(cfg: c.StationConfig, det: Scorer) -> None:
    """Set ``det``'s image threshold to the station's operating point (if it names one); every
    model version the station serves gets it."""
    point = cfg.operating_point
    if point is not None:
        if det.state.learned:
            raise CostfilterError(f"{cfg.file}: operating_point: {cfg.model} has several learned categories, each "
                                  "with its own thresholds; re-calibrate one with calibrate --category instead")
        assert det.thresholds is not None
        det.thresholds, chosen = chosen_point(det.thresholds, det.state.calibration_scores, point.false_reject,
                                              point.threshold)
        log.info("operating point: image threshold %.4f (false-reject rate on the calibration images %.2f%%)",
                 chosen.threshold, 100 * chosen.false_reject)


class Station:
    """Sources → inspector → history (+ outbox) → sinks. ``start`` / ``stop``; ``health``."""

    def __init__(self, cfg: c.StationConfig, detector: Scorer | None = None, store: HistoryStore | None = None,
                 *, sign_key: str | None = None):
        self.cfg = cfg
        self.detector = detector if detector is not None else open_detector(cfg, sign_key)
        self.store = store if store is not None else HistoryStore(cfg.store, cfg.db)
        self.metrics = Metrics()
        sinks = [make_sink(s, cfg.station, cfg.backoff_max_s) for s in cfg.sinks]
        self.inspector = Inspector(self.detector, self.store, model_name=cfg.model.name, station=cfg.station,
                                   sinks=[s.name for s in sinks], metrics=self.metrics)
        self.deliverers = [Deliverer(s, self.store, self.metrics, cfg.backoff_max_s) for s in sinks]
        self.inspector.on_commit = [d.wake.set for d in self.deliverers]
        self.inspector.prepare = lambda det: at_operating_point(cfg, det)
        # Model versions and drift alarms (to these sinks), headless or beside the service.
        self.loop = OperatorLoop(self.inspector, model_path=cfg.model if detector is None else None,
                                 sign_key=sign_key, drift=cfg.drift)
        self.sources = [HotFolder(s, self.inspector, cfg.station) if isinstance(s, c.FolderSource)
                        else StreamSource(s, self.inspector) for s in cfg.sources]
        self.watchdog = Watchdog(self.inspector, self.sources, self.deliverers, watchdog_s=cfg.watchdog_s,
                                 anchor_s=cfg.anchor_s, backoff_max_s=cfg.backoff_max_s)
        self.metrics.watch_backlog(self.store.backlog, lambda: [d.sink.name for d in self.deliverers])
        orphans = set(self.store.backlog()) - {d.sink.name for d in self.deliverers}
        for name in sorted(orphans):
            log.warning("the outbox holds undelivered messages for sink %r, which %s no longer names; "
                        "they stay in the database until a sink of that name returns", name, cfg.file)
        self._stopped = threading.Event()

    def start(self) -> None:
        self.loop.start()
        for d in self.deliverers:
            d.start()
        for s in self.sources:
            s.start()
        self.watchdog.start()

    def stop(self) -> None:
        self.watchdog.stop()
        for s in self.sources:  # no new records first, then let the senders finish what they hold
            s.stop()
        for d in self.deliverers:
            d.stop()
        self.loop.stop()
        self._stopped.set()

    def health(self) -> dict[str, Any]:
        """Each source and sink with its state and counts, the backlog per sink, and ``ok``."""
        try:
            backlog = self.store.backlog()
        except Exception:  # noqa: BLE001 - the database's own state is reported by the service
            backlog = {}
        sources = [{"name": s.name, "kind": s.kind, "target": s.target, "state": s.state, "ok": s.ok,
                    "inspected": s.inspected, "failed": s.failed} for s in self.sources]
        sinks = [{"name": d.sink.name, "kind": d.sink.kind, "target": d.sink.target, "state": d.state, "ok": d.ok,
                  "delivered": d.delivered, "failures": d.failures, "backlog": backlog.get(d.sink.name, 0)}
                 for d in self.deliverers]
        problems = dict(self.watchdog.problems)
        for x, what in [(x, "source") for x in sources] + [(x, "sink") for x in sinks]:
            why = problems.get(f"{what} {x['name']}")
            if why:  # the thread's own state can no longer be believed
                x["ok"], x["state"] = False, f"{why} (watchdog)"
        return {"name": self.cfg.station, "ok": not problems and all(x["ok"] for x in sources + sinks),
                "sources": sources, "sinks": sinks, "backlog": sum(backlog.values()), "watchdog": problems}

    def run_until_signal(self) -> None:
        """Run until SIGINT or SIGTERM (the headless ``watch``)."""
        def _stop(signum: int, frame: Any) -> None:
            self._stopped.set()

        previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
        self.start()
        try:
            while not self._stopped.wait(1.0):
                pass
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
