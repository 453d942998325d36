"""The operator's loop over HTTP: the review queue, verdicts, model versions (preview, apply,
rollback), drift and the audit trail. Apply and rollback need the admin role
(:data:`~costfilter.serve.security.ADMIN_PATHS`); everything done is recorded with the key's name."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool

from .. import model_thread
from ..errors import CostfilterError
from . import audit
from .loop import OperatorLoop, Refused
from .wire import ApplyIn, PreviewIn, RollbackIn, VerdictIn, _out, _user


def add_loop_routes(app: FastAPI, loop: OperatorLoop) -> None:
    @app.get("/whoami")
    def whoami(request: Request) -> dict[str, str]:
        """The name and role of the key this request came with."""
        name, role = _user(request)
        return {"name": name, "role": role}

    @app.get("/review")
    def review(station: str | None = Query(None, max_length=64, description="a station's name; '' for uploads"),
               decision: str | None = Query(None, pattern="^(review|reject|unknown)$"),
               since: datetime | None = None, until: datetime | None = None,
               limit: int = Query(50, ge=0, le=500), offset: int = Query(0, ge=0, le=2**53)) -> dict[str, Any]:
        """Images decided review, reject or unknown, newest first, each with its latest verdict."""
        decisions = (decision,) if decision else ("review", "reject", "unknown")
        total, rows = loop.queue(decisions=decisions, station=station, since=since, until=until, limit=limit,
                                 offset=offset)
        return {"total": total, "limit": limit, "offset": offset,
                "items": [_out(r).model_dump() for r in rows]}

    @app.post("/results/{record_id}/verdict")
    def verdict(record_id: str, body: VerdictIn, request: Request) -> dict[str, Any]:
        """An operator's verdict on a prediction: good, or defect (with a type and a note)."""
        try:
            return loop.give_verdict(record_id, body.verdict, _user(request)[0], body.defect_type, body.note)
        except KeyError:
            raise HTTPException(404, f"no prediction {record_id[:64]!r}") from None
        except CostfilterError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.get("/versions")
    def versions() -> dict[str, Any]:
        """Every model version (newest first), the active one, and the images waiting to be applied."""
        cands = loop.candidates()
        return {"versions": loop.versions.list(), "active": loop.versions.active(), "teachable": loop.teachable,
                "candidates": [_out(r).model_dump() for r in cands]}

    @app.post("/versions/preview")
    async def preview(body: PreviewIn | None = None) -> dict[str, Any]:
        """The next version built in memory from the confirmed-good images: its thresholds, the
        false-reject interval, recent flagged images that would now pass, and recall on every
        image confirmed as a defect."""
        try:
            # Teaching runs on a thread of its own, so inspections go on meanwhile (model_thread.py).
            return await run_in_threadpool(model_thread.run_apart, loop.preview, body.recalibrate if body else False)
        except CostfilterError as exc:
            raise HTTPException(409, str(exc)) from None

    @app.post("/versions/apply")
    async def apply(body: ApplyIn, request: Request) -> dict[str, Any]:
        """Serve the previewed version (admin). 409 when it would pass a confirmed defect, unless forced."""
        try:
            return await run_in_threadpool(model_thread.run_apart, loop.apply, _user(request)[0], force=body.force,
                                           note=body.note, recalibrate=body.recalibrate)
        except Refused as exc:
            raise HTTPException(409, str(exc)) from None
        except CostfilterError as exc:
            raise HTTPException(409, str(exc)) from None

    @app.post("/versions/rollback")
    async def rollback(body: RollbackIn, request: Request) -> dict[str, Any]:
        """Serve an earlier version (admin): ``to``, or the active version's parent."""
        try:
            return await run_in_threadpool(loop.activate, body.to, _user(request)[0])
        except CostfilterError as exc:
            raise HTTPException(409, str(exc)) from None

    @app.get("/drift")
    def drift() -> dict[str, Any]:
        """Per station (``""``: uploads): KS and PSI of image and typical-patch scores against the
        calibration images, the flagged share, their limits, alarms, and the chart series."""
        return {"stations": loop.drift()}

    @app.get("/audit")
    def audit_entries(limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=2**53),
                      action: str | None = Query(None, max_length=32)) -> dict[str, Any]:
        """The audit trail, newest first."""
        return {"items": audit.recent(loop.store.engine, limit, offset, action)}

