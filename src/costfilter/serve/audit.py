"""The audit trail: an append-only log in the history database of who did what — each
decision, verdict, model version, activation and threshold change — where every entry carries
the hash of the one before it, so editing, removing, inserting or reordering an entry breaks the
chain at that entry.

Each entry that writes a row commits to that row whole (``row``: a hash over every column), so
:func:`verify` replays the chain into the rows it says must exist — predictions, verdicts,
versions and which version is active — and names every row that is missing, extra or different.
A database from before that rule gets one ``adopt`` entry the first time a service or station
opens it, committing to the rows it had then.

What a chain cannot see by itself is its newest entries cut off: a shorter chain is still a
valid chain. :func:`head` gives the newest entry's number and hash (an *anchor*); a station sends
one to its sinks at an interval and ``costfilter audit anchor`` prints one, and ``verify`` with
anchors kept elsewhere names any that the chain no longer reaches.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.engine import Connection, Engine

from ..atomic import write_bytes
from .schema import audit_log, predictions, verdicts, versions

GENESIS = "0" * 64
#: this trail's rule: entries commit to their rows whole (entries without it are from before)
VERSION = 2
#: fields of a prediction its ``decision`` entry records (and :func:`verify` compares)
DECISION_FIELDS = ("image_sha256", "decision", "score", "image_threshold", "model_sha256", "station")
VERDICT_FIELDS = ("prediction_id", "verdict", "defect_type", "note", "user")
#: the tables whose rows the chain commits to, each with its key column and the columns left out
#: of a row's hash (``active`` changes on activation: the chain follows it through ``activate``)
COVERED: dict[str, tuple[Table, str, tuple[str, ...]]] = {
    "predictions": (predictions, "id", ()),
    "verdicts": (verdicts, "seq", ()),
    "versions": (versions, "n", ("active",)),
}
#: which action inserts a row of which table (its subject or ``details[key]`` names the row)
INSERTS = {"decision": "predictions", "verdict": "verdicts", "version": "versions"}
#: what an entry from before the rule recorded of its row, and so what verify can compare
LEGACY_FIELDS = {"predictions": DECISION_FIELDS, "verdicts": VERDICT_FIELDS, "versions": ("sha256",)}
_NOUN = {"predictions": "prediction", "verdicts": "verdict", "versions": "model version"}


def entry_hash(prev: str, seq: int, created: str, user: str, action: str, subject: str | None,
               details: dict[str, Any]) -> str:
    """SHA-256 over the previous entry's hash and this entry's fields, as canonical JSON."""
    body = json.dumps([prev, seq, created, user, action, subject, details], sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(body.encode()).hexdigest()


def _value(v: Any) -> Any:
    if isinstance(v, datetime):  # SQLite gives back a naive time; every time stored is UTC
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(v, str) and v[:1] in "[{":
        try:  # a database without a JSON type gives the text
            return json.loads(v)
        except ValueError:
            return v
    return v


def row_hash(table: str, row: dict[str, Any]) -> str:
    """SHA-256 of one row of a covered table: every column but those the chain follows apart,
    values as the database gives them back (times in UTC, JSON decoded)."""
    tbl, _, skip = COVERED[table]
    values = {c.name: _value(row.get(c.name)) for c in tbl.columns if c.name not in skip}
    body = json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def _last(conn: Connection) -> tuple[int, str]:
    """The newest entry's number and hash, ``(0, GENESIS)`` for an empty trail."""
    last = conn.execute(select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)).first()
    return (0, GENESIS) if last is None else (int(last[0]), str(last[1]))


def _active_in_db(conn: Connection) -> list[int]:
    """The versions the database marks active (one, when nobody changed it by hand)."""
    return [int(n) for n in conn.execute(select(versions.c.n).where(versions.c.active.is_(True))).scalars()]


def _made_active(action: str, details: dict[str, Any]) -> int | None:
    """The version an ``activate`` or ``adopt`` entry left active (None: none)."""
    if action == "activate":
        return details.get("to")
    active = details.get("active") or []
    return int(active[0]) if active else None


def append(conn: Connection, user: str, action: str, subject: str | None, details: dict[str, Any], *,
           row: dict[str, Any] | None = None) -> int:
    """Append one entry inside the caller's transaction (so it commits with what it records);
    ``row``: the row of ``INSERTS[action]``'s table this entry inserts, committed to whole.
    Returns the entry's number. Two writers racing for the same number collide on the primary
    key and one transaction fails, rather than forking the chain."""
    last_seq, prev = _last(conn)
    seq = last_seq + 1
    created = datetime.now(UTC).isoformat(timespec="microseconds")
    details = dict(details, v=VERSION)
    if row is not None:
        details["row"] = row_hash(INSERTS[action], row)
    details = json.loads(json.dumps(details))  # as the database will give it back (tuples → lists)
    conn.execute(audit_log.insert(), {"seq": seq, "created": created, "user": user, "action": action,
                                      "subject": subject, "details": details, "prev": prev,
                                      "hash": entry_hash(prev, seq, created, user, action, subject, details)})
    return seq


def adopt_if_needed(conn: Connection, user: str = "service") -> int | None:
    """On a database written before entries committed to their rows: one ``adopt`` entry that
    commits to every covered row there now (and to the active version), so that from here on a
    row without its entry is named. Returns its number, or None when nothing needed adopting."""
    last = conn.execute(select(audit_log.c.details).order_by(audit_log.c.seq.desc()).limit(1)).scalar_one_or_none()
    if last is not None and _decoded(last).get("v") == VERSION:
        return None
    rows = {name: {str(r[key]): row_hash(name, dict(r)) for r in conn.execute(select(tbl)).mappings()}
            for name, (tbl, key, _) in COVERED.items()}
    if last is None and not any(rows.values()):
        return None  # a new database: its first entry starts the rule
    return append(conn, user, "adopt", None, {"rows": rows, "active": _active_in_db(conn)})


def record_keys(conn: Connection, keys: dict[str, tuple[str, str]], user: str = "service") -> int | None:
    """A ``keys`` entry naming each API key's name and role (and the first 12 hex digits of its
    SHA-256) when they differ from the last such entry: the trail then says who could do what
    from when. The key file itself is not in the database, so this is what the service started
    with, not a check of the file. Returns the entry's number, or None when nothing changed."""
    roles = {name: {"role": role, "sha256": sha[:12]} for sha, (name, role) in sorted(keys.items())}
    last = conn.execute(select(audit_log.c.details).where(audit_log.c.action == "keys")
                        .order_by(audit_log.c.seq.desc()).limit(1)).scalar_one_or_none()
    if (last is None and not roles) or (last is not None and _decoded(last).get("keys") == roles):
        return None
    return append(conn, user, "keys", None, {"keys": roles})


def decision_details(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in DECISION_FIELDS}


def _decoded(details: Any) -> dict[str, Any]:
    return json.loads(details) if isinstance(details, str) else dict(details)


def _entry(row: Any) -> dict[str, Any]:
    """A stored entry as a dict, ``details`` decoded (a database without a JSON type gives text)."""
    d = dict(row)
    d["details"] = _decoded(d["details"])
    return d


def _rows(engine: Engine) -> Iterator[dict[str, Any]]:
    with engine.connect() as conn:
        for r in conn.execute(select(audit_log).order_by(audit_log.c.seq)).mappings():
            yield _entry(r)


def _describe(e: dict[str, Any]) -> str:
    return f"audit entry {e['seq']} ({e['action']} {e['subject'] or ''} by {e['user']} at {e['created']})"


def head(engine: Engine) -> tuple[int, str]:
    """The newest entry's number and hash (``(0, GENESIS)`` for an empty trail): an anchor."""
    with engine.connect() as conn:
        return _last(conn)


def active_version(engine: Engine) -> int | None:
    """The active version, if the trail's last activation (or adoption) made it so; None when
    the database says otherwise (the pointer changed by hand), which a service must not follow."""
    with engine.connect() as conn:
        db = _active_in_db(conn)
        last = conn.execute(select(audit_log.c.action, audit_log.c.details)
                            .where(audit_log.c.action.in_(("activate", "adopt")))
                            .order_by(audit_log.c.seq.desc()).limit(1)).first()
    if len(db) != 1 or last is None:
        return None
    return db[0] if _made_active(last[0], _decoded(last[1])) == db[0] else None


def parse_anchor(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` (as ``audit anchor`` prints it) → ``(seq, hash)``; ValueError when malformed."""
    seq, _, h = text.strip().partition(":")
    if not seq.isdigit() or len(h) != 64 or any(ch not in "0123456789abcdef" for ch in h):
        raise ValueError(f"an anchor is SEQ:HASH (a number, ':', 64 hex digits), got {text!r}")
    return int(seq), h


class _Expected:
    """The rows the chain says must exist: table → key → (row hash, the entry that said so)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {t: {} for t in COVERED}
        self.active: tuple[int | None, dict[str, Any]] | None = None
        self.full = False  # the chain commits to every covered row (an adopt, or entries under the rule)
        #: entries from before the rule, which name their row and some of its fields
        self.legacy: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in COVERED}

    def take(self, e: dict[str, Any]) -> None:
        d, action = e["details"], e["action"]
        if d.get("v") == VERSION:
            self.full = True
        if action in ("adopt", "activate"):
            self.active = (_made_active(action, d), e)
        if action == "adopt":
            for table, rows in d.get("rows", {}).items():
                for key, h in rows.items():
                    self.rows.setdefault(table, {})[str(key)] = (h, e)
            return
        table = INSERTS.get(action)
        if table is None:
            return
        key = str(d.get("seq")) if table == "verdicts" else str(e["subject"])
        if "row" in d:
            self.rows[table][key] = (d["row"], e)
        else:
            self.legacy[table][key] = e


def verify(engine: Engine, anchors: Iterable[tuple[int, str]] = ()) -> tuple[int, str, list[str]]:
    """Walk the chain and compare the rows it commits to with the database: ``(entries, head
    hash, problems)``, each problem one line naming the entry or row; none means intact.
    ``anchors``: ``(seq, hash)`` pairs kept elsewhere, each of which the chain must still hold."""
    problems: list[str] = []
    prev, n, expected_seq = GENESIS, 0, 1
    exp = _Expected()
    hashes: dict[int, str] = {}
    first_time: str | None = None
    for e in _rows(engine):
        n += 1
        first_time = first_time or e["created"]
        if e["seq"] != expected_seq:
            problems.append(f"audit entries {expected_seq}–{e['seq'] - 1} are missing (removed?)")
        if e["prev"] != prev:
            problems.append(f"{_describe(e)} does not follow the entry before it (an entry was removed, "
                            "inserted, reordered or changed before it)")
        content = (e["prev"], e["seq"], e["created"], e["user"], e["action"], e["subject"], e["details"])
        if entry_hash(*content) != e["hash"]:
            problems.append(f"{_describe(e)} was changed after it was written (its hash does not match its content)")
        exp.take(e)
        hashes[int(e["seq"])] = e["hash"]
        prev, expected_seq = e["hash"], e["seq"] + 1
    last_seq = expected_seq - 1
    for seq, h in anchors:
        if seq > last_seq:
            problems.append(f"anchor {seq}:{h[:12]}… is past the trail's last entry {last_seq}: entries "
                            f"{last_seq + 1}–{seq} were cut off (truncated?)")
        elif seq > 0 and hashes.get(seq) != h:
            problems.append(f"anchor {seq}:{h[:12]}… does not match audit entry {seq} (the trail was rewritten "
                            "up to there)")
    with engine.connect() as conn:
        for table, (tbl, key, _) in COVERED.items():
            _compare(conn, table, tbl, key, exp, first_time, problems)
        active = _active_in_db(conn)
    if exp.active is not None or active:
        want, e = exp.active if exp.active is not None else (None, None)
        if active != ([want] if want is not None else []):
            said = f"v{want}, as {_describe(e)} made it" if e is not None and want is not None else "none"
            problems.append(f"the active model version is {', '.join(f'v{a}' for a in active) or 'none'} in the "
                            f"database but {said} (changed by hand?)")
    return n, prev, problems


def _compare(conn: Connection, table: str, tbl: Table, key: str, exp: _Expected, first_time: str | None,
             problems: list[str]) -> None:
    noun = _NOUN[table]
    want = exp.rows[table]
    present: set[str] = set()
    for r in conn.execute(select(tbl).order_by(tbl.c[key])).mappings():
        k = str(r[key])
        present.add(k)
        name = f"{noun} {k}" + (f" ({r['filename']})" if table == "predictions" else "")
        if table == "verdicts":
            name += f" on prediction {r['prediction_id']}"
        if k in want:
            h, e = want[k]
            if row_hash(table, dict(r)) != h:
                named = [f"{f} is {r[f]!r} in the database but {e['details'][f]!r}" for f in LEGACY_FIELDS[table]
                         if f in e["details"] and e["details"][f] != r[f]]
                problems.append(f"{name} differs from what {_describe(e)} committed to"
                                f"{': ' + '; '.join(named) if named else ''} (edited?)")
            continue
        legacy = exp.legacy[table].get(k)
        if legacy is not None:
            for f in LEGACY_FIELDS[table]:
                if legacy["details"].get(f) != r[f]:
                    problems.append(f"{name}: {f} is {r[f]!r} in the database but {legacy['details'].get(f)!r} in "
                                    f"{_describe(legacy)} (edited?)")
            continue
        if not exp.full:  # a trail from before rows were committed to: only what came after it began
            created = _value(r.get("created"))
            if first_time is None or created < first_time:
                continue
        problems.append(f"{name} has no entry in the audit trail (inserted into the database by hand?)")
    for k, (_, e) in want.items():
        if k not in present:
            problems.append(f"{noun} {k} of {_describe(e)} is missing from the database (deleted?)")
    for k, e in exp.legacy[table].items():
        if k not in present and k not in want:
            problems.append(f"{noun} {k} of {_describe(e)} is missing from the database (deleted?)")


def recent(engine: Engine, limit: int = 50, offset: int = 0, action: str | None = None) -> list[dict[str, Any]]:
    """Entries newest first (the page's audit view)."""
    q = select(audit_log).order_by(audit_log.c.seq.desc()).limit(limit).offset(offset)
    if action:
        q = q.where(audit_log.c.action == action)
    with engine.connect() as conn:
        return [_entry(r) for r in conn.execute(q).mappings()]


def export_csv(engine: Engine, path: Path, force: bool = False) -> int:
    """Write every entry to ``path`` as CSV (atomically; an existing file only with ``force``);
    returns the number of entries. The caller refuses a ``path`` inside the store it reads."""
    from ..atomic import check_writable

    check_writable(path, force)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["seq", "created", "user", "action", "subject", "details", "prev", "hash"])
    n = 0
    for e in _rows(engine):
        w.writerow([e["seq"], e["created"], e["user"], e["action"], e["subject"] or "",
                    json.dumps(e["details"], sort_keys=True), e["prev"], e["hash"]])
        n += 1
    write_bytes(path, buf.getvalue().encode())
    return n
