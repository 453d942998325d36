"""Prediction history: one row per prediction in a SQL database (SQLite by default, any
SQLAlchemy URL otherwise), and the image, overlay, mask, map and thumbnail files on disk.

Files are written (atomically) before the row is committed, and the row is committed in one
transaction, so a kill at any moment leaves either a complete record or none: at worst some
unreferenced files, never a row pointing at a missing or half-written file.

A station (:mod:`costfilter.station`) commits two more things in that same transaction: one
``outbox`` row per sink (the message it still has to deliver) and an ``inputs`` row naming the
input it came from, so a restart neither loses a message nor inspects a file twice.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import and_, create_engine, event, func, select, text, true
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ..atomic import NewFolder
from ..errors import CostfilterError
from . import audit
from .schema import inputs, migrate, outbox, predictions

T = TypeVar("T")

#: the files kept per prediction, beside the database
FILE_KINDS = ("image", "overlay", "mask", "map", "thumb")
#: free space the store keeps beyond a prediction's files (the database's own growth, its WAL)
MIN_FREE_BYTES = 8 << 20


class StoreUnavailable(CostfilterError):
    """The history cannot take a prediction now (folder or database gone, read-only, unreachable);
    nothing was acknowledged."""


class StoreFull(StoreUnavailable):
    """No space left for a prediction's files or row; nothing was acknowledged."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers never block the writer and a crash mid-write rolls back cleanly;
    # synchronous=FULL: a committed row survives a power cut, not only a killed process.
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


@dataclasses.dataclass(frozen=True)
class Started:
    """A record whose first files are being written and synced (:meth:`HistoryStore.begin`):
    its id, those files (kind → file name), and the folder they go into, once written."""

    record_id: str
    files: dict[str, str]
    folder: Future[NewFolder]


class HistoryStore:
    """Rows in ``url`` (default ``sqlite:///<root>/history.sqlite3``), files under ``root/files``."""

    def __init__(self, root: Path | str, url: str | None = None, *, adopt: bool = True):
        """``adopt``: commit the audit trail to the rows of a database written before entries
        committed to their rows (:func:`audit.adopt_if_needed`); the audit commands, which must
        not bless what they check, open without it."""
        self.root = Path(root)
        self.files = self.root / "files"
        try:
            self.files.mkdir(parents=True, exist_ok=True)
            probe = self.files / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise CostfilterError(f"{self.root}: cannot keep the history here ({exc.strerror or exc}); "
                                  "give --store a writable folder") from None
        self.url = url or f"sqlite:///{(self.root / 'history.sqlite3').resolve()}"
        sqlite = self.url.startswith("sqlite")
        try:
            self.engine: Engine = create_engine(self.url, connect_args={"timeout": 30} if sqlite else {},
                                                pool_pre_ping=not sqlite)
            if sqlite:
                event.listen(self.engine, "connect", _sqlite_pragmas)
            migrate(self.engine)
            with self.engine.begin() as conn:  # a write that changes nothing: a read-only database fails here
                conn.execute(predictions.delete().where(predictions.c.id.is_(None)))
                if adopt:
                    audit.adopt_if_needed(conn)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise CostfilterError(f"{url or self.url}: cannot open the history database for writing "
                                  f"({str(exc).splitlines()[0]})") from None
        # The SQLite file as opened: if it is deleted or replaced, pooled connections would go on
        # writing into the unlinked file, and every row acknowledged after that would be lost.
        database = self.engine.url.database if sqlite else None
        self.db_file = Path(database).resolve() if database and database != ":memory:" else None
        self.db_inode = _inode(self.db_file) if self.db_file else None
        self.audit_lock = threading.RLock()
        #: syncs a record's files while its row is prepared (one thread, started on first use)
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="costfilter-sync")
        #: writes and syncs records' first files (begin); apart, so that a commit never waits
        #: behind the next images' writes (a station scores a batch while it keeps the last)
        self._starter = ThreadPoolExecutor(1, thread_name_prefix="costfilter-begin")

    def file_path(self, record_id: str, name: str) -> Path:
        """Where one of a record's files lives: ``files/<id[:2]>/<id>/<name>``."""
        return self.files / record_id[:2] / record_id / name

    def problem(self, need_bytes: int = 0, *, probe: bool = True) -> str | None:
        """Why the store cannot take a prediction of ``need_bytes`` now, or None when it can:
        its folder, file folder or database file gone or replaced, no space, and (``probe``)
        the files not writable or the database not answering."""
        if not self.files.is_dir():
            return f"the store folder {self.files} is gone"
        if self.db_file is not None and _inode(self.db_file) != self.db_inode:
            return f"the history database {self.db_file} was deleted or replaced"
        try:
            free = shutil.disk_usage(self.files).free
        except OSError as exc:
            return f"cannot check free space ({exc.strerror or exc})"
        if free < need_bytes + MIN_FREE_BYTES:
            return f"no space left on device ({free // 1024} KB free)"
        if not probe:
            return None
        try:
            fd, probe_file = tempfile.mkstemp(prefix=".write-test.", dir=self.files)
            os.close(fd)
            os.unlink(probe_file)
        except OSError as exc:
            return f"cannot write to {self.files} ({exc.strerror or exc})"
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any driver error means the database is not usable
            return f"the history database does not answer ({str(exc).splitlines()[0]})"
        return None

    def transact(self, work: Callable[[Connection], T]) -> T:
        """Run ``work(conn)`` in one write transaction that may append to the audit trail:
        serialised in this process (the chain needs its entries one after another) and run again
        when another process took the same entry number first."""
        with self.audit_lock:
            for attempt in range(3):
                try:
                    with self.engine.begin() as conn:
                        return work(conn)
                except IntegrityError as exc:
                    if attempt == 2 or "audit" not in str(exc.orig).lower():
                        raise
        raise AssertionError("unreachable")

    def begin(self, record_id: str, blobs: dict[str, tuple[str, bytes]]) -> Started:
        """Start keeping record ``record_id``: its folder is made and ``blobs`` (kind → (file
        name, content)) are written and synced on a helper thread of the store's, while the caller
        goes on (an upload's file, while the image is decoded and scored). Finish it with
        :meth:`add` (``started=``), or drop it with :meth:`discard`; a failure here is raised
        by either."""
        need = sum(len(data) for _, data in blobs.values())

        def start() -> NewFolder:
            reason = self.problem(need, probe=False)
            if reason is not None:
                raise _refusal(reason)
            folder = self._new_folder(record_id)
            try:
                folder.write({name: data for name, data in blobs.values()})
                folder.sync()
            except OSError as exc:  # the folder was removed again
                raise _write_failure(exc) from None
            return folder

        return Started(record_id, {kind: name for kind, (name, _) in blobs.items()}, self._starter.submit(start))

    def discard(self, started: Started) -> None:
        """Drop a record begun with :meth:`begin` that will not be kept (its image was not
        decodable, or scoring failed): its folder is removed."""
        try:
            folder = started.folder.result()
        except Exception:  # noqa: BLE001 - it failed, and removed its folder, on its own
            return
        folder.remove()

    def add(self, row: dict[str, Any], blobs: dict[str, tuple[str, bytes]], *, started: Started | None = None,
            messages: dict[str, Any] | None = None, input_key: str | None = None,
            user: str = "service") -> dict[str, Any]:
        """Write ``blobs`` (kind → (file name, content)), then commit ``row`` with their names, and
        in the same transaction ``messages`` (sink name → payload) into the outbox,
        ``input_key`` (what it was inspected from) into the inputs and the decision into the
        audit trail (as made by ``user``). ``started``: the record's first files, begun with
        :meth:`begin` (its id is ``row["id"]``).

        Refused with :class:`StoreFull` / :class:`StoreUnavailable` (nothing written) when the
        store cannot keep it; if a write or the commit fails, the files are removed again and
        the failure is raised as one of those two.
        """
        if started is not None and started.record_id != row["id"]:
            raise ValueError(f"record {row['id']} was begun as {started.record_id}")
        need = sum(len(data) for _, data in blobs.values())
        # No write probe or database ping: the writes and the commit below are those tests, and
        # fail the same way. What they would not notice (a replaced database file) is checked.
        reason = self.problem(need, probe=False)
        if reason is not None:
            if started is not None:
                self.discard(started)
            raise _refusal(reason)
        # Raises what failed in begin(); that removed its folder.
        folder = started.folder.result() if started is not None else self._new_folder(row["id"])
        try:
            folder.write({name: data for name, data in blobs.values()})
        except OSError as exc:  # the folder was removed again
            raise _write_failure(exc) from None
        # The files are synced while the row's statements run; the commit waits for them, so a
        # row never refers to files that a power cut could take back.
        synced = self._syncer.submit(folder.sync)
        files = dict(started.files if started is not None else {})
        row = dict(row, files=files | {kind: name for kind, (name, _) in blobs.items()})

        def work(conn: Connection) -> None:
            # Values apart from the statement: its compiled form is cached (0.2 → 0.06 ms here).
            conn.execute(predictions.insert(), row)
            audit.append(conn, user, "decision", row["id"], audit.decision_details(row), row=row)
            if messages:
                conn.execute(outbox.insert(), [{"sink": sink, "prediction_id": row["id"], "payload": payload,
                                                "created": row["created"], "attempts": 0}
                                               for sink, payload in messages.items()])
            if input_key is not None:
                conn.execute(inputs.insert(), {"key": input_key, "prediction_id": row["id"]})
            synced.result()

        try:
            try:
                self.transact(work)
            finally:
                wait([synced])  # the sync holds the files open: it ends before any clean-up
        except OSError as exc:
            folder.remove()
            raise _write_failure(exc) from None
        except SQLAlchemyError as exc:
            folder.remove()
            first = str(getattr(exc, "orig", exc)).splitlines()[0]
            if "full" in first.lower():
                raise StoreFull(f"the history database is full ({first})") from None
            raise StoreUnavailable(f"the history database refused the row ({first})") from None
        except BaseException:
            folder.remove()
            raise
        return row

    def notify(self, ref: str, payload: dict[str, Any], sinks: Sequence[str], *,
               entry: tuple[str, str, str | None, dict[str, Any]] | None = None) -> None:
        """Queue one message that is not an inspection (an input that failed, an alarm, an anchor)
        for each of ``sinks``, in commit order with the inspections; ``ref`` names what it is
        about. ``entry``: an audit entry ``(user, action, subject, details)`` committed with it."""

        def work(conn: Connection) -> None:
            if entry is not None:
                audit.append(conn, *entry)
            if sinks:
                now = utc_now()
                conn.execute(outbox.insert(), [{"sink": sink, "prediction_id": ref[:32], "payload": payload,
                                                "created": now, "attempts": 0} for sink in sinks])

        self.transact(work)

    def _new_folder(self, record_id: str) -> NewFolder:
        try:
            return NewFolder(self.file_path(record_id, ""))
        except FileExistsError:  # an id already used: that folder is not this record's to remove
            raise StoreUnavailable(f"record {record_id} already has files in the store") from None
        except OSError as exc:
            raise _write_failure(exc) from None

    def get(self, record_id: str) -> dict[str, Any] | None:
        """One record by id, or None."""
        with self.engine.connect() as conn:
            r = conn.execute(select(predictions).where(predictions.c.id == record_id)).mappings().first()
        return _plain(r) if r else None

    def list(self, limit: int = 50, offset: int = 0, decision: str | Sequence[str] | None = None, *,
             station: str | None = None, since: datetime | None = None, until: datetime | None = None
             ) -> tuple[int, list[dict[str, Any]]]:
        """Newest first: ``(total matching, page of records)``, of one decision (or several),
        one station (``""``: uploads without one) and a time range when given."""
        where = and_(true(), *_filters(decision, station, since, until))
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(predictions).where(where)).scalar_one()
            rows = conn.execute(select(predictions).where(where).order_by(predictions.c.created.desc(),
                                                                         predictions.c.id.desc())
                                .limit(limit).offset(offset)).mappings().all()
        return int(total), [_plain(r) for r in rows]

    def seen(self, input_key: str) -> str | None:
        """The prediction an input was already inspected into, or None."""
        with self.engine.connect() as conn:
            return conn.execute(select(inputs.c.prediction_id).where(inputs.c.key == input_key)).scalar_one_or_none()

    def pending(self, sink: str, limit: int = 100) -> list[dict[str, Any]]:
        """The oldest undelivered messages of ``sink``, in commit order: ``seq``, ``prediction_id``, ``payload``."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(outbox.c.seq, outbox.c.prediction_id, outbox.c.payload)
                                .where(outbox.c.sink == sink, outbox.c.delivered.is_(None))
                                .order_by(outbox.c.seq).limit(limit)).mappings().all()
        return [{**r, "payload": json.loads(r["payload"]) if isinstance(r["payload"], str) else r["payload"]}
                for r in rows]

    def mark_delivered(self, seq: int) -> None:
        """Record that a sink acknowledged message ``seq``."""
        with self.engine.begin() as conn:
            conn.execute(outbox.update().where(outbox.c.seq == seq)
                         .values(delivered=utc_now(), attempts=outbox.c.attempts + 1))

    def mark_failed(self, seq: int, error: str) -> None:
        """Count a failed delivery attempt of message ``seq`` and keep its reason."""
        with self.engine.begin() as conn:
            conn.execute(outbox.update().where(outbox.c.seq == seq)
                         .values(attempts=outbox.c.attempts + 1, last_error=error[:500]))

    def backlog(self) -> dict[str, int]:
        """Undelivered messages per sink."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(outbox.c.sink, func.count()).where(outbox.c.delivered.is_(None))
                                .group_by(outbox.c.sink)).all()
        return {sink: int(n) for sink, n in rows}

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()


def _filters(decision: str | Sequence[str] | None, station: str | None, since: datetime | None,
             until: datetime | None) -> list[Any]:
    c = predictions.c
    out: list[Any] = []
    if decision:
        out.append(c.decision == decision if isinstance(decision, str) else c.decision.in_(list(decision)))
    if station is not None:
        out.append(c.station.is_(None) if station == "" else c.station == station)
    if since is not None:
        out.append(c.created >= since)
    if until is not None:
        out.append(c.created < until)
    return out


def _refusal(reason: str) -> StoreUnavailable:
    """The error for a :meth:`HistoryStore.problem` reason: :class:`StoreFull` when it is space."""
    return (StoreFull if reason.startswith("no space") else StoreUnavailable)(reason)


def _write_failure(exc: OSError) -> StoreUnavailable:
    if exc.errno == errno.ENOSPC:
        return StoreFull("no space left on device")
    return StoreUnavailable(f"cannot write the prediction's files ({exc.strerror or exc})")


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _plain(row: Any) -> dict[str, Any]:
    out = dict(row)
    created = out["created"]
    if created.tzinfo is None:  # SQLite drops the zone; every time stored is UTC
        created = created.replace(tzinfo=UTC)
    out["created"] = created.isoformat(timespec="milliseconds")
    for key in ("regions", "files"):
        if isinstance(out[key], str):
            out[key] = json.loads(out[key])
    return out


def utc_now() -> datetime:
    """The current time, UTC."""
    return datetime.now(UTC)
