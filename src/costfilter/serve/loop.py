"""The operator's loop: verdicts on flagged images, confirmed-good images taught to the model
as a new version (with a preview of what changes, and a refusal when it would miss a confirmed
defect), rollback, and a drift monitor per station. The service (:mod:`.app`) exposes it; the
model code is :meth:`costfilter.api.Detector.teach`."""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from ..drift import FLAGGED, DriftConfig, DriftMonitor
from ..errors import CostfilterError
from . import audit
from .inspection import Inspector, Scorer, open_scorer
from .schema import predictions, verdicts
from .store import _plain, utc_now
from .versions import ModelVersions

log = logging.getLogger("costfilter.serve")

VERDICTS = ("good", "defect")
#: flagged records the preview re-scores with the candidate model ("rejects that would now pass")
PREVIEW_RECENT = 200


class Refused(CostfilterError):
    """Applying would lose recall on confirmed defects; an admin may force it."""


def _latest_verdicts(conn: Connection) -> dict[str, dict[str, Any]]:
    last = select(func.max(verdicts.c.seq).label("seq")).group_by(verdicts.c.prediction_id).subquery()
    rows = conn.execute(select(verdicts).join(last, verdicts.c.seq == last.c.seq)).mappings()
    return {r["prediction_id"]: dict(r) for r in rows}


class OperatorLoop:
    """Verdicts, versions and drift over one inspector and its store."""

    def __init__(self, inspector: Inspector, *, model_path: Path | None = None, sign_key: str | None = None,
                 drift: DriftConfig | None = None, poll_s: float = 2.0):
        self.inspector, self.store = inspector, inspector.store
        self.versions = ModelVersions(self.store)
        self.sign_key, self.poll_s = sign_key, poll_s
        self.drift_config = drift or DriftConfig()
        self.monitors: dict[str, DriftMonitor] = {}
        self._lock = threading.RLock()  # one preview / apply / rollback at a time
        # The monitors have their own lock: inspections must not wait for a preview being built.
        self._monitor_lock = threading.Lock()
        self._preview: tuple[tuple[str, tuple[str, ...], bool], Scorer, dict[str, Any]] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if model_path is not None:
            row, other = self.versions.start(model_path, inspector.sha)
            if other:
                self._serve(row)
            else:  # the history names the version from the first record on
                inspector.swap(inspector.detector, self._label(row))
        self._reset_monitors(warm=True)
        inspector.on_record.append(self._observe)

    # ------------------------------------------------------------------ versions in service
    @property
    def teachable(self) -> str | None:
        """Why the served model cannot be taught (None: it can)."""
        from ..fitting import teach_refusal

        det = self.inspector.detector
        if not hasattr(det, "teach"):
            return "the service runs an exported model; serve its checkpoint to apply verdicts"
        return teach_refusal(det)

    def _serve(self, row: dict[str, Any]) -> None:
        det = open_scorer(self.versions.path(row), sign_key=self.sign_key)
        if det.state.sha256 != row["sha256"]:
            raise CostfilterError(f"model version {row['n']}: {self.versions.path(row)} holds another model")
        self.inspector.prepare(det)
        self.inspector.swap(det, self._label(row))
        self._preview = None
        self._reset_monitors(warm=True)
        log.info("serving model version %d (%s)", row["n"], row["sha256"][:12])

    def _label(self, row: dict[str, Any]) -> str:
        det = self.inspector.detector
        return f"v{row['n']} {self.inspector.model_name} {det.config.method} {row['sha256'][:12]}"

    def start(self) -> None:
        """Follow the active version in the database (``costfilter versions rollback`` while the
        service runs takes effect within ``poll_s``)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._follow, name="costfilter-versions", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _follow(self) -> None:
        refused: int | None = None
        while not self._stop.wait(self.poll_s):
            try:
                act = self.versions.active()
                if act is not None and act["sha256"] != self.inspector.sha:
                    if audit.active_version(self.store.engine) != act["n"]:
                        if refused != act["n"]:  # once per pointer, not every poll
                            refused = act["n"]
                            log.error("model version v%s is marked active in the database without an activation "
                                      "in the audit trail (changed by hand?); still serving %s; `costfilter audit "
                                      "verify` names it", act["n"], self.inspector.served.label)
                        continue
                    refused = None
                    with self._lock:
                        self._serve(act)
            except Exception as exc:  # noqa: BLE001 - keep following; the reason is logged
                log.warning("cannot follow the active model version: %s", str(exc).splitlines()[0])

    # ------------------------------------------------------------------ review and verdicts
    def queue(self, *, decisions: tuple[str, ...] = ("review", "reject", "unknown"), station: str | None = None,
              since: datetime | None = None, until: datetime | None = None, limit: int = 50,
              offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """Flagged records, newest first, each with its latest verdict (or None)."""
        total, rows = self.store.list(limit, offset, decisions, station=station, since=since, until=until)
        with self.store.engine.connect() as conn:
            latest = _latest_verdicts(conn)
        return total, [dict(r, verdict=_verdict_out(latest.get(r["id"]))) for r in rows]

    def give_verdict(self, prediction_id: str, verdict: str, user: str, defect_type: str | None = None,
                     note: str | None = None) -> dict[str, Any]:
        """Record an operator's verdict (and its audit entry, in one transaction)."""
        if verdict not in VERDICTS:
            raise CostfilterError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        if self.store.get(prediction_id) is None:
            raise KeyError(prediction_id)
        defect_type = (defect_type or "").strip()[:64] or None if verdict == "defect" else None
        note = (note or "").strip()[:500] or None
        values = {"prediction_id": prediction_id, "verdict": verdict, "defect_type": defect_type, "note": note,
                  "user": user}

        def work(conn: Connection) -> int:
            created = utc_now()
            seq = int(conn.execute(verdicts.insert().values(**values, created=created)).inserted_primary_key[0])
            audit.append(conn, user, "verdict", prediction_id, {"seq": seq, **values},
                         row={"seq": seq, **values, "created": created})
            return seq

        seq = self.store.transact(work)
        self._preview = None
        return {"seq": seq, **values}

    def _confirmed(self, verdict: str) -> list[dict[str, Any]]:
        with self.store.engine.connect() as conn:
            latest = _latest_verdicts(conn)
            ids = [pid for pid, v in latest.items() if v["verdict"] == verdict]
            rows = conn.execute(select(predictions).where(predictions.c.id.in_(ids))).mappings().all() if ids else []
        return [_plain(r) for r in rows]

    def candidates(self) -> list[dict[str, Any]]:
        """Records confirmed good whose image the served model does not hold yet (one per image)."""
        held = set(getattr(self.inspector.detector.state, "training_hashes", []))
        out, seen = [], set()
        for r in sorted(self._confirmed("good"), key=lambda r: r["created"]):
            key = r["image_sha256"][:16]
            if key not in held and key not in seen:
                seen.add(key)
                out.append(r)
        return out

    def _image(self, row: dict[str, Any]) -> Path:
        return self.store.file_path(row["id"], row["files"]["image"])

    # ------------------------------------------------------------------ preview and apply
    def preview(self, recalibrate: bool = False) -> dict[str, Any]:
        """Build the next version in memory from the candidates and say what it changes.

        ``recalibrate`` False (the default) keeps the thresholds: the candidates reached the
        review queue because they scored high, so their scores are the top of the good parts'
        scores, not a sample of them, and adding them to the calibration images would raise the
        threshold past what good parts need (``benchmarks/loop.py`` measures the recall that
        costs). True re-calibrates on the earlier calibration images plus the candidates, for
        candidates that are a random sample of good parts."""
        why = self.teachable
        if why:
            raise CostfilterError(why)
        with self._lock:
            cands = self.candidates()
            if not cands:
                raise CostfilterError("no confirmed-good images to apply: give 'good' verdicts first")
            key = (self.inspector.sha, tuple(r["id"] for r in cands), recalibrate)
            if self._preview is not None and self._preview[0] == key:
                return self._preview[2]
            current = self.inspector.detector
            new = copy.deepcopy(current)
            new.progress = False
            changed = new.teach([self._image(r) for r in cands], who=None, recalibrate=recalibrate)
            report = {"recalibrated": recalibrate, "model": changed,
                      "images": [{"id": r["id"], "filename": r["filename"]} for r in cands],
                      "false_reject": {"before": _chosen(current), "after": _chosen(new)}}
            report |= self._effects(current, new, {r["id"] for r in cands})
            self._preview = (key, new, report)
            return report

    def _effects(self, old: Scorer, new: Scorer, taught: set[str]) -> dict[str, Any]:
        """Recent flagged records that would now pass, and recall on every confirmed defect."""
        _, recent = self.store.list(PREVIEW_RECENT, 0, FLAGGED)
        recent = [r for r in recent if r["id"] not in taught]
        now_pass = []
        if recent:
            preds = new.predict([self._image(r) for r in recent], errors=[])
            by_name = {p.path: p for p in preds}
            for r in recent:
                p = by_name.get(str(self._image(r)))
                if p is not None and p.decision == "pass":
                    now_pass.append({"id": r["id"], "filename": r["filename"], "decision": r["decision"],
                                     "score": r["score"], "new_score": p.score})
        defects = self._confirmed("defect")
        recall: dict[str, Any] = {"confirmed_defects": len(defects), "before": None, "after": None, "missed": []}
        if defects:
            paths = [self._image(r) for r in defects]
            before = {p.path: p.decision for p in old.predict(paths, errors=[])}
            after = {p.path: p for p in new.predict(paths, errors=[])}
            n = len(defects)
            recall["before"] = sum(before.get(str(p)) not in (None, "pass") for p in paths) / n
            recall["after"] = sum(after[str(p)].decision != "pass" for p in paths if str(p) in after) / n
            recall["missed"] = [{"id": r["id"], "filename": r["filename"]} for r, p in zip(defects, paths)
                                if str(p) in after and after[str(p)].decision == "pass"]
        loses = recall["before"] is not None and recall["after"] < recall["before"]
        return {"recent_checked": len(recent), "now_pass": now_pass, "recall": recall, "loses_recall": loses}

    def apply(self, user: str, *, force: bool = False, note: str = "", recalibrate: bool = False) -> dict[str, Any]:
        """Make the previewed version (built again if the candidates changed) the active one.
        Refused (:class:`Refused`) when it flags fewer confirmed defects than the served model,
        unless ``force``."""
        with self._lock:
            report = self.preview(recalibrate)
            assert self._preview is not None
            _, new, _ = self._preview
            if report["loses_recall"] and not force:
                r = report["recall"]
                raise Refused(f"refused: the new version would pass {len(r['missed'])} confirmed defect(s) "
                              f"(recall {r['before']:.3f} → {r['after']:.3f}); an admin may force it")
            parent = self.versions.active()
            new.state.taught[-1]["by"] = user  # who applied it, inside the model file too
            sha, name = self.versions.keep_detector(new, self.sign_key)
            summary = {"images": [x["id"] for x in report["images"]], "rows": report["model"]["rows"],
                       "image_threshold": report["model"]["image_threshold"],
                       "pixel_threshold": report["model"]["pixel_threshold"],
                       "recall": [report["recall"]["before"], report["recall"]["after"]], "forced": bool(force),
                       "recalibrated": recalibrate,
                       "now_pass": len(report["now_pass"])}
            row = self.versions.add(sha, name, parent=parent["n"] if parent else None, user=user,
                                    note=note or f"{len(report['images'])} confirmed-good image(s)", summary=summary,
                                    activate=True)
            new.state.sha256 = sha
            self.inspector.prepare(new)
            self.inspector.swap(new, self._label(row))
            self._preview = None
            self._reset_monitors()
            return {"version": row, "report": report}

    def activate(self, n: int | None, user: str, reason: str = "rollback") -> dict[str, Any]:
        """Serve version ``n`` (None: the active version's parent)."""
        with self._lock:
            target = self.versions.rollback_target(n)
            row = self.versions.activate(target, user, reason)
            self._serve(row)
            return row

    # ------------------------------------------------------------------ drift
    def _key(self, station: str | None) -> str:
        return station or ""

    def _reset_monitors(self, warm: bool = False) -> None:
        """Fresh monitors for the served model's calibration; ``warm``: refilled from the
        latest records of this model (a restart or a rollback resumes where it stopped)."""
        det = self.inspector.detector
        st, t = det.state, self.inspector.thresholds
        scores = list(st.calibration_scores)
        typical = list(getattr(st, "calibration_typical", []) or [])
        flagged = sum(t.decide(s) != "pass" for s in scores) / len(scores) if scores else 0.0
        with self._monitor_lock:
            self.monitors = {}
            self._make = lambda: DriftMonitor(scores, typical, flagged, self.drift_config)
            if warm and scores:
                for station in self._stations():
                    mon = self.monitors.setdefault(self._key(station), self._make())
                    total, rows = self._replay(station)
                    for r in rows:
                        mon.observe(r["score"], r["typical_score"], r["decision"])
                    mon.images, mon.alarms = total, 0

    def _stations(self) -> list[str | None]:
        with self.store.engine.connect() as conn:
            return [s for (s,) in conn.execute(select(predictions.c.station).distinct())]

    def _replay(self, station: str | None) -> tuple[int, list[dict[str, Any]]]:
        """The served version's records of ``station`` that rebuild its monitor after a restart
        or a rollback, oldest first: its baseline (the first ones) and its latest window; and how
        many records it has."""
        c, cfg = predictions.c, self.drift_config
        same_station = c.station.is_(None) if station is None else c.station == station
        where = (c.model_sha256 == self.inspector.sha) & same_station
        cols = (c.id, c.created, c.score, c.typical_score, c.decision)
        with self.store.engine.connect() as conn:
            total = int(conn.execute(select(func.count()).select_from(predictions).where(where)).scalar_one())
            first = conn.execute(select(*cols).where(where).order_by(c.created, c.id)
                                 .limit(cfg.baseline)).mappings().all()
            last = conn.execute(select(*cols).where(where).order_by(c.created.desc(), c.id.desc())
                                .limit(cfg.window)).mappings().all()
        seen = {r["id"] for r in first}
        return total, [dict(r) for r in first] + [dict(r) for r in reversed(last) if r["id"] not in seen]

    def _observe(self, row: dict[str, Any]) -> None:
        if row["model_sha256"] != self.inspector.sha or not self.inspector.detector.state.calibration_scores:
            return  # scored by the version before a swap: its statistics belong to that version
        with self._monitor_lock:
            key = self._key(row.get("station"))
            mon = self.monitors.get(key) or self.monitors.setdefault(key, self._make())
            alarms = mon.observe(row["score"], row["typical_score"], row["decision"])
        for a in alarms:
            self._raise(row, a)

    def _raise(self, row: dict[str, Any], alarm: Any) -> None:
        text = alarm.text()
        station = row.get("station")
        log.warning("%s%s", f"station {station}: " if station else "", text)
        payload = {"kind": "drift_alarm", "key": f"drift-{row['id']}-{alarm.statistic}", "station": station,
                   "statistic": alarm.statistic, "value": alarm.value, "limit": alarm.limit, "window": alarm.window,
                   "images": alarm.images, "message": text, "model_sha256": row["model_sha256"],
                   "timestamp": utc_now().isoformat(timespec="milliseconds")}
        try:
            self.inspector.notify(row["id"], payload, entry=(f"station {station}" if station else "service",
                                                             "drift_alarm", row["id"], dataclasses.asdict(alarm)))
        except Exception as exc:  # noqa: BLE001 - the alarm is logged above either way
            log.warning("the drift alarm could not be stored: %s", str(exc).splitlines()[0])

    def drift(self) -> dict[str, Any]:
        """Every monitor's state, by station (``""``: uploads)."""
        with self._monitor_lock:
            return {k: m.state() for k, m in self.monitors.items()}


def _chosen(det: Scorer) -> dict[str, Any] | None:
    p = next((p for p in det.state.operating_points if p.name in ("chosen", "fixed")), None)
    return None if p is None else {"threshold": p.threshold, "rate": p.false_reject, "low": p.ci_low,
                                   "high": p.ci_high, "n_good": p.n_good}


def _verdict_out(v: dict[str, Any] | None) -> dict[str, Any] | None:
    if v is None:
        return None
    return {"verdict": v["verdict"], "defect_type": v["defect_type"], "note": v["note"], "user": v["user"],
            "created": v["created"].isoformat(timespec="seconds") if hasattr(v["created"], "isoformat")
            else str(v["created"])}
