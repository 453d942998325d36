"""Model versions of a service: every model it has served, kept as a content-addressed file
(``models/<sha256>.ckpt`` under the store, named by the model's content hash, which loading
checks) with a row in the history database naming its parent,
who made it and why; exactly one is active. Applying verdicts adds a version; rollback
activates an earlier one. Each change is an entry in the audit trail, committed with it."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from ..atomic import write_with
from ..errors import CostfilterError
from . import audit
from .schema import versions
from .store import HistoryStore, utc_now


def _plain(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["created"] = out["created"].isoformat(timespec="seconds") if out["created"] else None
    if isinstance(out["summary"], str):
        out["summary"] = json.loads(out["summary"])
    out["active"] = bool(out["active"])
    return out


class ModelVersions:
    """The versions table and the ``models/`` folder of ``store``."""

    def __init__(self, store: HistoryStore):
        self.store = store
        self.folder = store.root / "models"

    def list(self) -> list[dict[str, Any]]:
        """Every version, newest first."""
        with self.store.engine.connect() as conn:
            return [_plain(r) for r in conn.execute(select(versions).order_by(versions.c.n.desc())).mappings()]

    def _first(self, where: Any) -> dict[str, Any] | None:
        with self.store.engine.connect() as conn:
            r = conn.execute(select(versions).where(where)).mappings().first()
        return _plain(r) if r else None

    def get(self, n: int) -> dict[str, Any] | None:
        return self._first(versions.c.n == n)

    def by_sha(self, sha: str) -> dict[str, Any] | None:
        return self._first(versions.c.sha256 == sha)

    def active(self) -> dict[str, Any] | None:
        return self._first(versions.c.active.is_(True))

    def path(self, row: dict[str, Any]) -> Path:
        return self.folder / row["file"]

    def lineage(self, n: int) -> list[int]:
        """``n`` and its ancestors, nearest first."""
        out, seen = [], set()
        row = self.get(n)
        while row is not None and row["n"] not in seen:
            out.append(row["n"])
            seen.add(row["n"])
            row = self.get(row["parent"]) if row["parent"] is not None else None
        return out

    def keep_file(self, source: Path, sha: str) -> str:
        """Copy model file ``source`` (content hash ``sha``) into the folder under that hash
        (read only, never moved); returns the file name."""
        name = f"{sha}{source.suffix.lower() or '.ckpt'}"
        dst = self.folder / name
        if not dst.is_file() or dst.stat().st_size != source.stat().st_size:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_with(dst, lambda tmp: shutil.copyfile(source, tmp))
        return name

    def keep_detector(self, det: Any, sign_key: str | None) -> tuple[str, str]:
        """Save a :class:`~costfilter.api.Detector` into the folder under its content hash."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".new-{uuid.uuid4().hex}.ckpt"
        try:
            sha = det.save(tmp, sign_key=sign_key)
            name = f"{sha}.ckpt"
            os.replace(tmp, self.folder / name)
        finally:
            tmp.unlink(missing_ok=True)
        return sha, name

    def add(self, sha: str, name: str, *, parent: int | None, user: str, note: str, summary: dict[str, Any],
            activate: bool) -> dict[str, Any]:
        """Record a version kept in the folder (and make it the active one), with its audit entries."""

        def work(conn: Connection) -> int:
            values = {"sha256": sha, "file": name, "parent": parent, "created": utc_now(), "user": user,
                      "note": note[:500], "summary": summary, "active": False}
            n = int(conn.execute(versions.insert().values(**values)).inserted_primary_key[0])
            audit.append(conn, user, "version", str(n), {"sha256": sha, "parent": parent, "note": note[:500],
                                                         **summary}, row={"n": n, **values})
            if activate:
                self._activate(conn, n, user, "new version")
            return n

        n = self.store.transact(work)
        row = self.get(n)
        assert row is not None
        return row

    def activate(self, n: int, user: str, reason: str) -> dict[str, Any]:
        """Make version ``n`` the active one (its file must be there and unchanged)."""
        row = self.get(n)
        if row is None:
            raise CostfilterError(f"no model version {n}")
        path = self.path(row)
        if not path.is_file():
            raise CostfilterError(f"model version {n}: its file {path} is missing; it cannot be served")
        self.store.transact(lambda conn: self._activate(conn, n, user, reason))
        out = self.get(n)
        assert out is not None
        return out

    def _activate(self, conn: Connection, n: int, user: str, reason: str) -> None:
        before = conn.execute(select(versions.c.n).where(versions.c.active.is_(True))).scalar_one_or_none()
        conn.execute(update(versions).values(active=False).where(versions.c.active.is_(True)))
        conn.execute(update(versions).values(active=True).where(versions.c.n == n))
        audit.append(conn, user, "activate", str(n), {"from": before, "to": n, "reason": reason})

    def rollback_target(self, to: int | None = None) -> int:
        """The version a rollback activates: ``to``, or the active version's parent."""
        if to is not None:
            return to
        act = self.active()
        if act is None or act["parent"] is None:
            raise CostfilterError("nothing to roll back to: the active version has no parent"
                                  + ("" if act else " (no version is active)"))
        return int(act["parent"])

    def start(self, model_path: Path, sha: str, user: str = "service") -> tuple[dict[str, Any], bool]:
        """At service start with ``model_path`` (SHA-256 ``sha``): the version to serve, and
        whether it differs from that file. A version made from this model (applied verdicts)
        stays active across restarts; a model the store has not served before becomes a new
        root version and is activated."""
        known = self.by_sha(sha)
        act = self.active()
        if known is not None and act is not None and known["n"] in self.lineage(act["n"]):
            return act, act["n"] != known["n"]
        if known is None:
            name = self.keep_file(model_path, sha)
            known = self.add(sha, name, parent=None, user=user, note=f"served from {model_path.name}",
                             summary={"source": str(model_path)}, activate=True)
            return known, False
        return self.activate(known["n"], user, f"served from {model_path.name}"), False
