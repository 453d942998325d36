"""The operator's loop: verdicts that teach the model (a new version, with a preview, refused when
it would pass a confirmed defect), rollback (HTTP and CLI, followed live), roles, the hash-chained
audit trail (verified, and broken by an edit, naming the row), drift statistics and alarms, and a
history database written before these tables existed."""

from __future__ import annotations

import csv
import sqlite3
import time

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from click.testing import CliRunner
from conftest import good_png, planted_defect_png
from fastapi.testclient import TestClient

from costfilter.bank.coreset import greedy_kcenter
from costfilter.cli import main
from costfilter.drift import DriftConfig, DriftMonitor, ks_limit, ks_statistic, psi
from costfilter.errors import CostfilterError
from costfilter.serve import HistoryStore, create_app
from costfilter.serve.audit import verify
from costfilter.serve.security import key_entry

ADMIN, OPERATOR = "admin-secret", "operator-secret"


def _post(c, data: bytes, name: str, key: str = ADMIN):
    r = c.post("/predict", files={"file": (name, data, "image/png")}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return r.json()


def _call(c, method: str, url: str, key: str = ADMIN, **kw):
    return c.request(method, url, headers={"Authorization": f"Bearer {key}"}, **kw)


@pytest.fixture
def served(fitted, tmp_path):
    det, root = fitted
    model = tmp_path / "m.ckpt"
    det.save(model)
    store = HistoryStore(tmp_path / "store")

    def make():
        from costfilter.api import Detector

        app = create_app(Detector.load(model, progress=False), store, model_name="m.ckpt", api_key=ADMIN,
                         keys=dict([key_entry("alice-key", "alice", "operator")]), operator_key=OPERATOR,
                         allowed_hosts=["testserver"], model_path=model)
        return TestClient(app)

    return make, store, root, model


def test_greedy_continues_from_existing_centres():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=g)
    start = torch.rand(300, generator=g) * 50
    chosen = greedy_kcenter(x, 5, start=start)
    assert int(chosen[0]) == int(torch.argmax(start))  # the row farthest from the bank comes first
    d = torch.minimum(start, ((x - x[chosen[0]]) ** 2).sum(1))
    assert int(chosen[1]) == int(torch.argmax(d))  # brute force: then the farthest from both
    # with a radius it stops as soon as every row is that close to the start or a chosen row
    grown = greedy_kcenter(x, 300, start=start, radius=3.0)
    d_all = torch.minimum(start, torch.cdist(x, x[grown]).square().min(1).values)
    assert 0 < len(grown) < 300 and float(d_all.max()) <= 9.0 + 1e-4
    shorter = greedy_kcenter(x, 300, start=start, radius=3.0)[:-1]
    assert float(torch.minimum(start, torch.cdist(x, x[shorter]).square().min(1).values).max()) > 9.0
    assert len(greedy_kcenter(x, 300, start=torch.zeros(300), radius=0.1)) == 0  # already covered


def test_teach_makes_a_confirmed_good_image_pass_and_recalibrates(fitted, tmp_path):
    import copy

    det, _ = fitted
    det = copy.deepcopy(det)
    odd = tmp_path / "odd.png"
    odd.write_bytes(planted_defect_png(3))
    before = det.predict([odd])[0]
    assert before.decision == "reject"
    n_cal, bank = len(det.state.calibration_scores), det.state.bank_size
    changed = det.teach([odd], who="alice")
    after = det.predict([odd])[0]
    assert after.decision == "pass" and after.score < before.score / 2
    assert len(det.state.calibration_scores) == n_cal + 1 and det.state.bank_size == bank + changed["rows"] > bank
    assert det.state.taught[-1]["by"] == "alice" and det.state.taught[-1]["images"] == 1
    with pytest.raises(CostfilterError, match="already holds"):
        det.teach([odd])


def test_review_verdict_apply_rollback_and_audit(served):
    make, store, _, _ = served
    with make() as c:
        bad = _post(c, planted_defect_png(1), "bad.png", key=OPERATOR)
        other = _post(c, planted_defect_png(2), "other.png", key=OPERATOR)
        assert bad["decision"] == other["decision"] == "reject"
        q = _call(c, "GET", "/review", key=OPERATOR).json()
        assert q["total"] == 2 and q["items"][0]["id"] == other["id"] and q["items"][0]["verdict"] is None
        # an operator's verdicts are recorded with the key's name; the image is then a candidate
        r = _call(c, "POST", f"/results/{bad['id']}/verdict", key="alice-key", json={"verdict": "good"})
        assert r.status_code == 200 and r.json()["user"] == "alice"
        assert _call(c, "POST", f"/results/{bad['id']}/verdict", json={"verdict": "maybe"}).status_code == 422
        assert _call(c, "POST", "/results/nope/verdict", json={"verdict": "good"}).status_code == 404
        v = _call(c, "GET", "/versions").json()
        assert [x["id"] for x in v["candidates"]] == [bad["id"]] and v["active"]["n"] == 1
        # an operator may preview, not apply
        p = _call(c, "POST", "/versions/preview", key="alice-key").json()
        assert p["images"][0]["id"] == bad["id"] and p["false_reject"]["after"]["n_good"] >= 1
        assert _call(c, "POST", "/versions/apply", key="alice-key", json={}).status_code == 403
        done = _call(c, "POST", "/versions/apply", json={"note": "new batch"}).json()
        assert done["version"]["n"] == 2 and done["version"]["parent"] == 1 and done["version"]["user"] == "admin"
        before, after = done["report"]["model"]["image_threshold"]
        assert done["report"]["recalibrated"] is False and before == after  # a flagged image is no calibration sample
        again = _post(c, planted_defect_png(1), "bad-again.png")
        assert again["decision"] == "pass" and again["model_version"].startswith("v2 ")
        assert c.get("/health").json()["model"]["version"] == 2
        # rollback: the same image is rejected again
        assert _call(c, "POST", "/versions/rollback", key=OPERATOR, json={}).status_code == 403
        assert _call(c, "POST", "/versions/rollback", json={}).json()["n"] == 1
        assert _post(c, planted_defect_png(1), "bad-third.png")["decision"] == "reject"
        entries = _call(c, "GET", "/audit", params={"limit": 100}).json()["items"]
    keys = [e["details"]["keys"] for e in entries if e["action"] == "keys"]
    assert len(keys) == 1 and keys[0]["alice"]["role"] == "operator" and keys[0]["admin"]["role"] == "admin"
    steps = [(e["action"], e["user"]) for e in reversed(entries) if e["action"] not in ("decision", "keys")]
    assert steps == [("version", "service"), ("activate", "service"), ("verdict", "alice"), ("version", "admin"),
                     ("activate", "admin"), ("activate", "admin")]
    assert [e["user"] for e in entries if e["action"] == "decision"][-1] == "operator"
    n, head, problems = verify(store.engine)
    assert problems == [] and n == len(entries) and len(head) == 64


def test_apply_refused_when_it_would_pass_a_confirmed_defect(served):
    make, _, _, _ = served
    with make() as c:
        a = _post(c, planted_defect_png(1), "a.png")
        b = _post(c, planted_defect_png(1), "b.png")  # the same defect again, confirmed as one
        _call(c, "POST", f"/results/{a['id']}/verdict", json={"verdict": "good"})
        _call(c, "POST", f"/results/{b['id']}/verdict", json={"verdict": "defect", "defect_type": "scratch"})
        p = _call(c, "POST", "/versions/preview", json={"recalibrate": True}).json()
        assert p["recalibrated"] and p["model"]["image_threshold"][1] != p["model"]["image_threshold"][0]
        assert p["loses_recall"] and p["recall"]["before"] == 1.0 and p["recall"]["after"] == 0.0
        r = _call(c, "POST", "/versions/apply", json={})
        assert r.status_code == 409 and "confirmed defect" in r.json()["detail"]
        assert _call(c, "GET", "/versions").json()["active"]["n"] == 1
        forced = _call(c, "POST", "/versions/apply", json={"force": True}).json()
        assert forced["version"]["summary"]["forced"] is True


def test_applied_version_survives_restart_and_cli_rollback_is_followed(served, tmp_path):
    make, store, _, _ = served
    with make() as c:
        bad = _post(c, planted_defect_png(1), "bad.png")
        _call(c, "POST", f"/results/{bad['id']}/verdict", json={"verdict": "good"})
        _call(c, "POST", "/versions/apply", json={})
    with make() as c:  # a restart with the same model file serves the applied version
        assert c.get("/health").json()["model"]["version"] == 2
        out = CliRunner().invoke(main, ["versions", "list", str(store.root)])
        assert out.exit_code == 0 and "* v2" in out.output and "  v1" in out.output
        out = CliRunner().invoke(main, ["versions", "rollback", str(store.root), "--user", "night-shift"])
        assert out.exit_code == 0, out.output
        deadline = time.monotonic() + 20
        while c.get("/health").json()["model"]["version"] != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.get("/health").json()["model"]["version"] == 1
        assert _post(c, planted_defect_png(1), "bad-again.png")["decision"] == "reject"
    out = CliRunner().invoke(main, ["versions", "rollback", str(store.root)])
    assert out.exit_code == 2 and "no parent" in out.output


def test_audit_verify_fails_naming_the_edited_row(served, tmp_path):
    make, store, root, _ = served
    with make() as c:
        for i in range(3):
            _post(c, planted_defect_png(i), f"p{i}.png")
        pid = _post(c, good_png(root), "good.png")["id"]
        _call(c, "POST", f"/results/{pid}/verdict", json={"verdict": "good"})
    ok = CliRunner().invoke(main, ["audit", "verify", str(store.root)])
    assert ok.exit_code == 0 and "chain intact" in ok.output
    out = tmp_path / "audit.csv"
    exported = CliRunner().invoke(main, ["audit", "export", str(store.root), "-o", str(out)])
    # the CSV: a header, the keys' roles, the version and its activation, four decisions, a verdict
    assert exported.exit_code == 0 and len(list(csv.reader(out.open()))) == 1 + 1 + 2 + 4 + 1
    db = sqlite3.connect(store.root / "history.sqlite3")
    # a decision edited in the audit trail: that entry is named
    seq = db.execute("SELECT seq FROM audit WHERE action = 'decision' ORDER BY seq LIMIT 1 OFFSET 1").fetchone()[0]
    db.execute("UPDATE audit SET details = replace(details, '\"reject\"', '\"pass\"') WHERE seq = ?", (seq,))
    db.commit()
    bad = CliRunner().invoke(main, ["audit", "verify", str(store.root)])
    assert bad.exit_code == 1 and f"audit entry {seq} (decision" in bad.output
    assert "changed after it was written" in bad.output
    # a prediction edited in its own table: the prediction is named
    db.execute("UPDATE audit SET details = replace(details, '\"pass\"', '\"reject\"') WHERE seq = ?", (seq,))
    db.execute("UPDATE predictions SET decision = 'pass' WHERE id = (SELECT subject FROM audit WHERE seq = ?)",
               (seq + 1,))
    db.commit()
    bad = CliRunner().invoke(main, ["audit", "verify", str(store.root)])
    assert bad.exit_code == 1 and "decision is 'pass' in the database but 'reject'" in bad.output
    # a prediction deleted: named from its entry
    db.execute("UPDATE predictions SET decision = 'reject' WHERE decision = 'pass' AND filename != 'good.png'")
    gone = db.execute("SELECT id FROM predictions WHERE filename = 'p2.png'").fetchone()[0]
    saved = db.execute("SELECT * FROM predictions WHERE id = ?", (gone,)).fetchone()
    db.execute("DELETE FROM predictions WHERE id = ?", (gone,))
    db.commit()
    bad = CliRunner().invoke(main, ["audit", "verify", str(store.root)])
    assert bad.exit_code == 1 and f"prediction {gone} of audit entry" in bad.output and "missing" in bad.output
    db.execute(f"INSERT INTO predictions VALUES ({','.join('?' * len(saved))})", saved)
    # an entry removed: the gap is named
    db.execute("DELETE FROM audit WHERE seq = ?", (seq,))
    db.commit()
    bad = CliRunner().invoke(main, ["audit", "verify", str(store.root)])
    assert bad.exit_code == 1 and f"audit entries {seq}–{seq} are missing" in bad.output


def test_history_database_of_an_earlier_version_is_migrated(fitted, tmp_path):
    root = tmp_path / "old"
    root.mkdir()
    db = sqlite3.connect(root / "history.sqlite3")
    db.execute("""CREATE TABLE predictions (id VARCHAR(32) PRIMARY KEY, created DATETIME NOT NULL,
        filename VARCHAR(255) NOT NULL, image_sha256 VARCHAR(64) NOT NULL, width INTEGER NOT NULL,
        height INTEGER NOT NULL, score FLOAT NOT NULL, decision VARCHAR(16) NOT NULL, typical_score FLOAT NOT NULL,
        image_threshold FLOAT NOT NULL, pixel_threshold FLOAT NOT NULL, map_scale FLOAT NOT NULL,
        model_sha256 VARCHAR(64) NOT NULL, model_version VARCHAR(128) NOT NULL, regions JSON NOT NULL,
        files JSON NOT NULL)""")
    db.execute("INSERT INTO predictions VALUES ('a1', '2026-01-01 00:00:00', 'x.png', 'ff', 1, 1, 0.5, 'reject', 0.1,"
               " 0.4, 0.3, 1.0, 'cc', 'old', '[]', '{}')")
    db.commit()
    store = HistoryStore(root)
    total, rows = store.list()
    assert total == 1 and rows[0]["station"] is None
    # rows from before the trail began are adopted by one entry, which commits to them
    n, _, problems = verify(store.engine)
    assert n == 1 and problems == []
    assert verify(HistoryStore(root).engine)[0] == 1  # adopted once, not at every opening
    db.execute("UPDATE predictions SET filename = 'y.png' WHERE id = 'a1'")
    db.commit()
    problems = verify(store.engine)[2]
    assert len(problems) == 1 and "prediction a1 (y.png) differs from what audit entry 1 (adopt" in problems[0]


# ------------------------------------------------------------------ drift
def test_ks_statistic_matches_scipy():
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(0)
    a, b = np.sort(rng.normal(size=137)), rng.normal(0.3, 1.2, size=200)
    assert ks_statistic(a, b) == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)


def test_psi_is_zero_for_the_reference_and_grows_with_a_shift():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=400)
    edges = np.quantile(ref, np.linspace(0, 1, 11)[1:-1])
    shares = np.full(10, 0.1)
    assert psi(edges, shares, ref) == pytest.approx(0.0, abs=1e-9)
    assert psi(edges, shares, ref + 0.5) > psi(edges, shares, ref + 0.2) > 0.01


def test_drift_baseline_that_differs_from_calibration_is_reported_once():
    rng = np.random.default_rng(2)
    cal_s, cal_t = rng.gamma(4, 1, 300), rng.normal(1, 0.1, 300)
    mon = DriftMonitor(list(cal_s), list(cal_t), 0.01, DriftConfig(window=50, baseline=100))
    raised = [a for _ in range(400) for a in mon.observe(rng.gamma(4, 1) * 1.5, rng.normal(1, 0.1), "pass")]
    assert [a.statistic for a in raised] == ["baseline_ks_score"] and raised[0].images == 100
    assert "against the calibration images" in raised[0].text()


def test_drift_quiet_on_a_stationary_stream_and_alarms_on_a_shift():
    rng = np.random.default_rng(0)
    cal_s, cal_t = rng.gamma(4, 1, 300), rng.normal(1, 0.1, 300)
    thr = np.quantile(cal_s, 0.99)
    cfg = DriftConfig(window=200)
    mon = DriftMonitor(list(cal_s), list(cal_t), float(np.mean(cal_s > thr)), cfg)
    for _ in range(20_000):  # the bound is 1 false alarm per 10,000 images: seeded, 0 here
        s = rng.gamma(4, 1)
        assert not mon.observe(s, rng.normal(1, 0.1), "reject" if s > thr else "pass")
    assert mon.alarms == 0 and mon.values["ks_score"] < ks_limit(500, 200, 1e-4 / 5) == mon.limits["ks_score"]
    assert mon.values["baseline_ks_score"] < mon.limits["baseline_ks_score"]  # the line starts as calibrated
    # a blur-like shift: every typical-patch score moves up by one standard deviation
    first = None
    for i in range(1, 400):
        s = rng.gamma(4, 1)
        raised = mon.observe(s, rng.normal(1.1, 0.1), "reject" if s > thr else "pass")
        if raised and first is None:
            first = (i, {a.statistic for a in raised})
    assert first is not None and first[0] <= 120 and first[1] & {"ks_typical", "psi_typical"}
    assert mon.alarms >= 1 and mon.state()["active"]["ks_typical"] and mon.state()["active"]["psi_typical"]


def test_dfm_is_taught_its_bank_without_training(mvtec_root, tmp_path):
    from conftest import small_config

    from costfilter import Detector

    cfg = small_config(coreset_ratio=0.5)
    cfg.method = "dfm"
    tr = cfg.dfm.training
    tr.steps, tr.val_every, tr.batch_size, tr.n_val = 4, 2, 4, 8
    det = Detector(cfg, progress=False).fit(mvtec_root, categories=["alpha"])
    adapter = {k: v.clone() for k, v in det.model.state_dict().items() if not k.startswith(("bank", "features"))}
    odd = tmp_path / "odd.png"
    odd.write_bytes(planted_defect_png(3))
    before = det.predict([odd])[0]
    changed = det.teach([odd])
    after = det.predict([odd])[0]
    assert changed["rows"] >= 1 and after.score < before.score
    assert len(det.state.calibration_scores) == det.state.n_calibration_images
    kept = det.model.state_dict()
    assert all(torch.equal(v, kept[k]) for k, v in adapter.items())  # nothing trained


def test_requests_during_apply_and_rollback_are_all_answered(served):
    """The swap waits for the batch being scored: uploads racing an apply and a rollback all get
    an answer, each stored with the version that scored it."""
    import threading

    make, store, _, _ = served
    with make() as c:
        bad = _post(c, planted_defect_png(1), "bad.png")
        _call(c, "POST", f"/results/{bad['id']}/verdict", json={"verdict": "good"})
        answers: list[int] = []
        stop = threading.Event()

        def upload(i: int) -> None:
            while not stop.is_set():
                r = c.post("/predict", files={"file": (f"u{i}.png", planted_defect_png(1), "image/png")},
                           headers={"Authorization": f"Bearer {ADMIN}"})
                answers.append(r.status_code)

        threads = [threading.Thread(target=upload, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        try:
            assert _call(c, "POST", "/versions/apply", json={}).status_code == 200
            assert _call(c, "POST", "/versions/rollback", json={}).status_code == 200
            time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
    assert answers and set(answers) == {200}
    total, rows = store.list(limit=500)
    assert total == len(answers) + 1
    versions = {r["model_version"].split()[0] for r in rows}
    assert versions <= {"v1", "v2"} and all(
        (r["decision"] == "pass") == r["model_version"].startswith("v2 ") for r in rows if r["filename"] != "bad.png")


def test_psi_limit_matches_brute_force_null():
    """The simulated null of PSI (Dirichlet spacings + multinomial window) against brute force:
    PSI of real random baselines and windows, with the bins cut at each baseline's deciles."""
    from costfilter.drift import _Reference, psi_limit

    rng = np.random.default_rng(3)
    values = []
    for _ in range(20_000):
        ref = _Reference.of(rng.normal(size=300))
        values.append(psi(ref.edges, ref.shares, rng.normal(size=100)))
    brute = float(np.quantile(values, 0.99))
    assert psi_limit((30,) * 10, 100, 0.01) == pytest.approx(brute, rel=0.05)


def test_costfilter_is_taught_its_base_bank_and_templates_without_training(mvtec_root, tmp_path):
    from test_costfilter import cf_config

    from costfilter import Detector

    det = Detector(cf_config("memory", steps=3), progress=False).fit(mvtec_root, categories=["alpha"])
    trained = {k: v.clone() for k, v in det.model.state_dict().items() if k.startswith("filter.")}
    n_templates = len(det.model.base.templates)
    odd = tmp_path / "odd.png"
    odd.write_bytes(planted_defect_png(3))
    before = det.predict([odd])[0]
    changed = det.teach([odd])
    after = det.predict([odd])[0]
    assert changed["rows"] >= 1 and len(det.model.base.templates) == n_templates + 1 and after.score < before.score
    assert all(torch.equal(v, det.model.state_dict()[k]) for k, v in trained.items())  # the filter is not trained
    det.save(tmp_path / "taught.ckpt")
    again = Detector.load(tmp_path / "taught.ckpt", progress=False)
    assert again.predict([odd])[0].score == pytest.approx(after.score, rel=1e-5)
    recon = Detector(cf_config("reconstruction", steps=2), progress=False).fit(mvtec_root, categories=["alpha"])
    with pytest.raises(CostfilterError, match="reconstruction base has no bank to teach"):
        recon.teach([odd])
