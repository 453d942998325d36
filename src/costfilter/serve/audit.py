"""The audit trail: an append-only log in the history database of who did what — each
decision, verdict, model version, activation and threshold change — where every entry carries
the hash of the one before it, so editing, removing or inserting an entry breaks the chain at
that entry. :func:`verify` walks the chain and also checks each prediction and verdict against
the entry written with it; :func:`export_csv` writes it out.

The chain proves the log was not changed *after* an entry, up to its head: keep the head hash
:func:`verify` prints somewhere else (a ticket, a second system) to pin the log up to there.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from ..atomic import write_bytes
from .schema import audit_log, predictions, verdicts

GENESIS = "0" * 64
#: fields of a prediction its ``decision`` entry records (and :func:`verify` compares)
DECISION_FIELDS = ("image_sha256", "decision", "score", "image_threshold", "model_sha256", "station")
VERDICT_FIELDS = ("prediction_id", "verdict", "defect_type", "note", "user")


def entry_hash(prev: str, seq: int, created: str, user: str, action: str, subject: str | None,
               details: dict[str, Any]) -> str:
    """SHA-256 over the previous entry's hash and this entry's fields, as canonical JSON."""
    body = json.dumps([prev, seq, created, user, action, subject, details], sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(body.encode()).hexdigest()


def append(conn: Connection, user: str, action: str, subject: str | None, details: dict[str, Any]) -> int:
    """Append one entry inside the caller's transaction (so it commits with what it records);
    returns its sequence number. Two writers racing for the same number collide on the primary
    key and one transaction fails, rather than forking the chain."""
    last = conn.execute(select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)).first()
    seq, prev = (1, GENESIS) if last is None else (int(last[0]) + 1, str(last[1]))
    created = datetime.now(UTC).isoformat(timespec="microseconds")
    details = json.loads(json.dumps(details))  # as the database will give it back (tuples → lists)
    conn.execute(audit_log.insert(), {"seq": seq, "created": created, "user": user, "action": action,
                                      "subject": subject, "details": details, "prev": prev,
                                      "hash": entry_hash(prev, seq, created, user, action, subject, details)})
    return seq


def decision_details(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in DECISION_FIELDS}


def _entry(row: Any) -> dict[str, Any]:
    """A stored entry as a dict, ``details`` decoded (a database without a JSON type gives text)."""
    d = dict(row)
    if isinstance(d["details"], str):
        d["details"] = json.loads(d["details"])
    return d


def _rows(engine: Engine) -> Iterator[dict[str, Any]]:
    with engine.connect() as conn:
        for r in conn.execute(select(audit_log).order_by(audit_log.c.seq)).mappings():
            yield _entry(r)


def _describe(e: dict[str, Any]) -> str:
    return f"audit entry {e['seq']} ({e['action']} {e['subject'] or ''} by {e['user']} at {e['created']})"


def verify(engine: Engine) -> tuple[int, str, list[str]]:
    """Walk the chain: ``(entries, head hash, problems)``, each problem one line naming the
    entry or row; no problems means intact."""
    problems: list[str] = []
    prev, n, expected = GENESIS, 0, 1
    decided: dict[str, dict[str, Any]] = {}
    verdict_entries: dict[int, dict[str, Any]] = {}
    first_time: str | None = None
    for e in _rows(engine):
        n += 1
        first_time = first_time or e["created"]
        if e["seq"] != expected:
            problems.append(f"audit entries {expected}–{e['seq'] - 1} are missing (removed?)")
        if e["prev"] != prev:
            problems.append(f"{_describe(e)} does not follow the entry before it (an entry was removed, "
                            "inserted or changed before it)")
        content = (e["prev"], e["seq"], e["created"], e["user"], e["action"], e["subject"], e["details"])
        if entry_hash(*content) != e["hash"]:
            problems.append(f"{_describe(e)} was changed after it was written (its hash does not match its content)")
        if e["action"] == "decision" and e["subject"]:
            decided[e["subject"]] = e
        if e["action"] == "verdict":
            verdict_entries[int(e["details"].get("seq", -1))] = e
        prev, expected = e["hash"], e["seq"] + 1
    with engine.connect() as conn:
        present = set()
        for r in conn.execute(select(predictions)).mappings():
            present.add(r["id"])
            e = decided.get(r["id"])
            created = r["created"] if r["created"].tzinfo else r["created"].replace(tzinfo=UTC)
            if e is None:
                if first_time is not None and created.isoformat() >= first_time:
                    problems.append(f"prediction {r['id']} ({r['filename']}) has no decision entry in the audit trail "
                                    "(inserted into the database by hand?)")
                continue
            for k in DECISION_FIELDS:
                if e["details"].get(k) != r[k]:
                    problems.append(f"prediction {r['id']} ({r['filename']}): {k} is {r[k]!r} in the database but "
                                    f"{e['details'].get(k)!r} in {_describe(e)} (edited?)")
        for pid, e in decided.items():
            if pid not in present:
                problems.append(f"prediction {pid} of {_describe(e)} is missing from the database (deleted?)")
        for r in conn.execute(select(verdicts)).mappings():
            e = verdict_entries.get(int(r["seq"]))
            if e is None:
                problems.append(f"verdict {r['seq']} on prediction {r['prediction_id']} has no audit entry")
                continue
            for k in VERDICT_FIELDS:
                if e["details"].get(k) != r[k]:
                    problems.append(f"verdict {r['seq']} on prediction {r['prediction_id']}: {k} is {r[k]!r} in the "
                                    f"database but {e['details'].get(k)!r} in {_describe(e)} (edited?)")
    return n, prev, problems


def recent(engine: Engine, limit: int = 50, offset: int = 0, action: str | None = None) -> list[dict[str, Any]]:
    """Entries newest first (the page's audit view)."""
    q = select(audit_log).order_by(audit_log.c.seq.desc()).limit(limit).offset(offset)
    if action:
        q = q.where(audit_log.c.action == action)
    with engine.connect() as conn:
        return [_entry(r) for r in conn.execute(q).mappings()]


def export_csv(engine: Engine, path: Path, force: bool = False) -> int:
    """Write every entry to ``path`` as CSV (atomically; an existing file only with ``force``);
    returns the number of entries."""
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
