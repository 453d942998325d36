"""The audit trail commits to every row that changes a decision or a model: the tamper table.

Each covered table (predictions, verdicts, versions and the active pointer, and the trail itself)
is tampered with by SQL in each way a person with the database file could — insert, delete, edit,
reorder — and ``audit verify`` must name the row or entry; cutting off the newest entries (with the
rows they committed to) leaves a valid shorter chain, which only an anchor kept elsewhere names.
The store is written through the same functions the service uses, without a model."""

from __future__ import annotations

import sqlite3
import types
from datetime import UTC, datetime

import pytest

pytest.importorskip("sqlalchemy")

from click.testing import CliRunner

from costfilter.cli import main
from costfilter.serve import HistoryStore
from costfilter.serve.audit import head, verify
from costfilter.serve.loop import OperatorLoop
from costfilter.serve.versions import ModelVersions


def _row(i: int, decision: str = "reject") -> dict:
    return {"id": f"p{i:031d}", "created": datetime(2026, 12, 1, 8, 0, i, 123456, tzinfo=UTC),
            "filename": f"part-{i}.png", "image_sha256": f"{i:064x}", "width": 64, "height": 48,
            "score": 0.5 + i / 7, "decision": decision, "typical_score": 0.1, "image_threshold": 0.4,
            "pixel_threshold": 0.3, "map_scale": 1.0, "model_sha256": "a" * 64, "model_version": "m v1",
            "regions": [{"x": i, "y": 2, "w": 3, "h": 4, "area": 12, "peak": 0.9}], "station": "line1",
            "source": "in"}


def _verdict(store: HistoryStore, pid: str, verdict: str, user: str = "alice") -> None:
    # OperatorLoop.give_verdict needs only the store of the loop it belongs to
    OperatorLoop.give_verdict(types.SimpleNamespace(store=store, _preview=None), pid, verdict, user,
                              note=f"{verdict} by {user}")


@pytest.fixture
def history(tmp_path):
    store = HistoryStore(tmp_path / "store")
    v = ModelVersions(store)
    v.add("1" * 64, "one.ckpt", parent=None, user="service", note="first", summary={"source": "m.ckpt"},
          activate=True)
    for i in range(4):
        store.add(_row(i), {"mask": ("mask.png", b"m")}, user="station line1")
    v.add("2" * 64, "two.ckpt", parent=1, user="admin", note="taught", summary={"images": 2}, activate=True)
    _verdict(store, _row(0)["id"], "good")
    _verdict(store, _row(1)["id"], "defect")
    _verdict(store, _row(0)["id"], "defect", "bob")
    assert verify(store.engine)[2] == []
    return store


def _sql(store: HistoryStore, *statements: str) -> None:
    db = sqlite3.connect(store.root / "history.sqlite3")
    for s in statements:
        db.execute(s)
    db.commit()
    db.close()


P1, P2 = _row(1)["id"], _row(2)["id"]
EARLY = (datetime(2020, 1, 1, tzinfo=UTC)).strftime("%Y-%m-%d %H:%M:%S.%f")

#: table × tampering → the SQL, and what the problem line must say
TAMPER = {
    "predictions-insert": ([(f"INSERT INTO predictions SELECT 'x{'0' * 31}', '{EARLY}', filename, image_sha256, width, "
                             "height, score, 'pass', typical_score, image_threshold, pixel_threshold, map_scale, "
                             "model_sha256, model_version, regions, files, station, source FROM predictions LIMIT 1")],
                           f"prediction x{'0' * 31} (part-0.png) has no entry in the audit trail"),
    "predictions-delete": ([f"DELETE FROM predictions WHERE id = '{P2}'"], f"prediction {P2} of audit entry"),
    "predictions-edit-decision": ([f"UPDATE predictions SET decision = 'pass' WHERE id = '{P1}'"],
                                  "decision is 'pass' in the database but 'reject'"),
    "predictions-edit-filename": ([f"UPDATE predictions SET filename = 'other.png' WHERE id = '{P1}'"],
                                  f"prediction {P1} (other.png) differs from what audit entry"),
    "predictions-edit-regions": ([f"UPDATE predictions SET regions = '[]' WHERE id = '{P1}'"],
                                 f"prediction {P1} (part-1.png) differs"),
    "predictions-reorder": ([(f"UPDATE predictions SET created = (SELECT created FROM predictions WHERE id = '{P2}') "
                              f"WHERE id = '{P1}'")], f"prediction {P1} (part-1.png) differs"),
    "verdicts-insert": ([(f"INSERT INTO verdicts (prediction_id, verdict, user, created) VALUES ('{P2}', 'good', "
                          f"'alice', '{EARLY}')")], f"verdict 4 on prediction {P2} has no entry"),
    "verdicts-delete": (["DELETE FROM verdicts WHERE seq = 3"], "verdict 3 of audit entry"),
    "verdicts-edit": (["UPDATE verdicts SET verdict = 'good' WHERE seq = 2"],
                      "verdict 2 on prediction"),
    "verdicts-reorder": (["UPDATE verdicts SET seq = 10 WHERE seq = 1", "UPDATE verdicts SET seq = 1 WHERE seq = 3",
                          "UPDATE verdicts SET seq = 3 WHERE seq = 10"], "verdict 1 on prediction"),
    "versions-insert": ([(f"INSERT INTO versions (sha256, file, parent, created, user, note, summary, active) "
                          f"VALUES ('{'3' * 64}', 'three.ckpt', 2, '{EARLY}', 'x', '', '{{}}', 0)")],
                        "model version 3 has no entry"),
    "versions-delete": (["DELETE FROM versions WHERE n = 1"], "model version 1 of audit entry"),
    "versions-edit": (["UPDATE versions SET file = 'evil.ckpt' WHERE n = 2"], "model version 2 differs"),
    "versions-reorder": (["UPDATE versions SET parent = NULL WHERE n = 2"], "model version 2 differs"),
    "versions-active": (["UPDATE versions SET active = (n = 1)"],
                        "the active model version is v1 in the database but v2"),
    "audit-insert": ([("INSERT INTO audit SELECT 100, created, user, action, subject, details, prev, hash FROM audit "
                       "WHERE seq = 2")], "audit entries"),
    "audit-delete": (["DELETE FROM audit WHERE seq = 3"], "audit entries 3–3 are missing"),
    "audit-edit": (["UPDATE audit SET user = 'mallory' WHERE seq = 2"], "audit entry 2 (activate 1 by mallory"),
    "audit-reorder": (["UPDATE audit SET seq = 100 WHERE seq = 2", "UPDATE audit SET seq = 2 WHERE seq = 3",
                       "UPDATE audit SET seq = 3 WHERE seq = 100"], "does not follow the entry before it"),
}


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_verify_names_every_tampering(history, case):
    statements, expected = TAMPER[case]
    _sql(history, *statements)
    result = CliRunner().invoke(main, ["audit", "verify", str(history.root)])
    assert result.exit_code == 1, result.output
    assert expected in result.output, result.output


def test_truncation_is_named_only_against_an_anchor(history):
    anchored = CliRunner().invoke(main, ["audit", "anchor", str(history.root)])
    assert anchored.exit_code == 0
    anchor = anchored.output.strip()
    assert anchor == "{}:{}".format(*head(history.engine))
    # the newest entries cut off with the rows they committed to: a valid, shorter chain
    _sql(history, "DELETE FROM verdicts WHERE seq = 3", "DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)")
    plain = CliRunner().invoke(main, ["audit", "verify", str(history.root)])
    assert plain.exit_code == 0 and "chain intact" in plain.output
    pinned = CliRunner().invoke(main, ["audit", "verify", str(history.root), "--anchor", anchor])
    seq = int(anchor.split(":")[0])
    assert pinned.exit_code == 1 and f"entries {seq}–{seq} were cut off" in pinned.output
    bad = CliRunner().invoke(main, ["audit", "verify", str(history.root), "--anchor", "12:nothex"])
    assert bad.exit_code == 2 and "--anchor" in bad.output and "Traceback" not in bad.output


def test_rewritten_chain_is_named_by_an_older_anchor(history):
    seq, h = head(history.engine)
    # the whole trail re-hashed from entry 2 on, as someone with the code could: the anchor still names it
    _sql(history, f"UPDATE audit SET hash = '{'f' * 64}' WHERE seq = {seq}")
    pinned = CliRunner().invoke(main, ["audit", "verify", str(history.root), "--anchor", f"{seq}:{h}"])
    assert pinned.exit_code == 1 and f"does not match audit entry {seq}" in pinned.output


def test_export_refuses_to_write_into_the_store(history, tmp_path):
    """L1: `audit export -o store/history.sqlite3 --force` wrote over the database it read."""
    db = history.root / "history.sqlite3"
    before = db.read_bytes()
    for target in (db, history.root / "audit.csv", history.root / "files" / "x.csv"):
        out = CliRunner().invoke(main, ["audit", "export", str(history.root), "-o", str(target), "--force"])
        assert out.exit_code == 2 and "inside the store" in out.output, out.output
    assert db.read_bytes()[:100] == before[:100] and verify(history.engine)[2] == []
    # a database kept outside its store (--db) is refused by name too
    other = tmp_path / "elsewhere"
    other.mkdir()
    url = f"sqlite:///{db}"
    out = CliRunner().invoke(main, ["audit", "export", str(other), "--db", url, "-o", str(db), "--force"])
    assert out.exit_code == 2 and "is the history database" in out.output, out.output
    fine = CliRunner().invoke(main, ["audit", "export", str(history.root), "-o", str(tmp_path / "a.csv")])
    assert fine.exit_code == 0 and (tmp_path / "a.csv").read_text().count("\n") == head(history.engine)[0] + 1


def test_verify_does_not_adopt_what_it_checks(tmp_path):
    """A database from before the rule is adopted by the service, never by `audit verify`."""
    store = HistoryStore(tmp_path / "s", adopt=False)
    _sql(store, "INSERT INTO predictions (id, created, filename, image_sha256, width, height, score, decision, "
                "typical_score, image_threshold, pixel_threshold, map_scale, model_sha256, model_version, regions, "
                f"files) VALUES ('a', '{EARLY}', 'a.png', 'ff', 1, 1, 0.5, 'pass', 0.1, 0.4, 0.3, 1.0, 'c', 'v', "
                "'[]', '{}')")
    CliRunner().invoke(main, ["audit", "verify", str(store.root)])
    assert head(store.engine)[0] == 0
    HistoryStore(store.root)
    assert head(store.engine)[0] == 1 and verify(store.engine)[2] == []


def test_service_does_not_follow_an_activation_without_its_entry(history):
    """L5: `versions.active` switched by SQL was followed by the running service."""
    from costfilter.serve.audit import active_version

    assert active_version(history.engine) == 2
    _sql(history, "UPDATE versions SET active = (n = 1)")
    assert active_version(history.engine) is None
    v = ModelVersions(history)
    v.path(v.get(1)).parent.mkdir(parents=True, exist_ok=True)
    v.path(v.get(1)).write_bytes(b"model one")
    v.activate(1, "admin", "rollback")
    assert active_version(history.engine) == 1 and verify(history.engine)[2] == []



def test_readme_tamper_table_is_the_tested_one():
    """Each cell the docs' tamper table promises is a case of TAMPER (or the anchor test)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "tutorials" / "operator-loop.md").read_text()
    lines = text[text.index("<!-- tamper-table"):].splitlines()[1:]
    rows = []
    for ln in lines[2:]:  # the table's rows, up to its end
        if not ln.strip().startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
    names = {"predictions": "predictions", "verdicts": "verdicts", "versions": "versions",
             "versions.active": "versions-active", "audit entries": "audit"}
    promised = set()
    for table, *cells in rows:
        if table.startswith("the newest entries cut off"):
            assert "--anchor" in cells[1]  # test_truncation_is_named_only_against_an_anchor
            continue
        for change, cell in zip(("insert", "delete", "edit", "reorder"), cells):
            if cell != "—":
                promised.add(names[table] if table == "versions.active" else f"{names[table]}-{change}")
    assert len(rows) == 6 and promised
    for p in promised:
        assert any(case == p or case.startswith(p + "-") for case in TAMPER), p
