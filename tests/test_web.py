"""The web page, end to end in headless Chromium (Debian's ``chromium`` driven by Playwright):
upload by file picker and by drag and drop, see score, decision, overlay and mask, browse the
history with thumbnails, move the displayed threshold, and see a bad upload's message."""

from __future__ import annotations

import contextlib
import os
import shutil

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
pytest.importorskip("fastapi")

from conftest import free_port, good_png, planted_defect_png, start_server

CHROMIUM = os.environ.get("COSTFILTER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")

# Flags for a sandboxed, offline machine: no GPU, no background connections, a fresh profile.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture
def page(fitted, tmp_path):
    det, root = fitted
    model = tmp_path / "m.ckpt"
    det.save(model)
    port = free_port()
    proc = start_server(model, tmp_path / "store", port)
    try:
        with _browser_page(port, 800) as pg:
            pg.good_png = good_png(root)
            yield pg
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def _browser_page(port: int, height: int, key: str | None = None):
    """Headless Chromium on the service's page (with ``key``: as if typed into its prompt)."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        pg = browser.new_page(viewport={"width": 1200, "height": height})
        pg.set_default_timeout(20_000)
        if key is not None:
            pg.once("dialog", lambda d: d.accept(key))
        pg.goto(f"http://127.0.0.1:{port}/")
        yield pg
        browser.close()


def _drop(page, data: bytes, name: str) -> None:
    """Drag a file onto the drop zone, as a user would from a file manager."""
    transfer = page.evaluate_handle(
        """([bytes, name]) => { const dt = new DataTransfer();
             dt.items.add(new File([new Uint8Array(bytes)], name, {type: 'image/png'})); return dt; }""",
        [list(data), name])
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


def test_upload_see_result_browse_history_adjust_threshold(page, tmp_path):
    sync_api.expect(page.locator("#model")).to_contain_text("memory")
    bad = tmp_path / "bad_part.png"
    bad.write_bytes(planted_defect_png(1))
    page.set_input_files("#file", str(bad))
    sync_api.expect(page.locator("#decision")).to_have_text("reject")
    bad_score = float(page.locator("#score").inner_text())
    page.wait_for_function("document.getElementById('overlay').naturalWidth === 48")
    # the mask canvas is drawn from the stored map: some pixels of the planted square are red
    page.wait_for_function("document.getElementById('mask').width === 48")
    count_red = """() => { const c = document.getElementById('mask');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] === 230 && d[i + 1] === 20) n++; return n; }"""
    red_calibrated = page.evaluate(count_red)
    # a stricter displayed pixel threshold redraws the mask with fewer defect pixels, not none
    page.evaluate("""() => { const s = document.getElementById('pixel'); s.value = 250;
                             s.dispatchEvent(new Event('input')); }""")
    red_strict = page.evaluate(count_red)
    assert 0 < red_strict < red_calibrated

    _drop(page, page.good_png, "good_part.png")
    sync_api.expect(page.locator("#decision")).to_have_text("pass")
    assert float(page.locator("#score").inner_text()) < bad_score
    rows = page.locator("#history tr")
    sync_api.expect(rows).to_have_count(2)
    sync_api.expect(rows.nth(0)).to_contain_text("good_part.png")
    page.wait_for_function("[...document.querySelectorAll('#history img')].every(i => i.naturalWidth > 0)")

    # Lowering the displayed threshold below the good part's score turns it into a reject, in the
    # result panel and in the history; the reset button restores the calibrated threshold.
    page.evaluate("""() => { const s = document.getElementById('threshold'); s.value = s.min;
                             s.dispatchEvent(new Event('input')); }""")
    sync_api.expect(page.locator("#decision")).to_have_text("reject")
    sync_api.expect(rows.nth(0).locator(".badge")).to_have_text("reject")
    page.click("#reset")
    sync_api.expect(page.locator("#decision")).to_have_text("pass")

    rows.nth(1).click()  # browse back to the first result
    sync_api.expect(page.locator("#decision")).to_have_text("reject")
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    if os.environ.get("COSTFILTER_SCREENSHOT"):
        shutil.copy(tmp_path / "page.png", os.environ["COSTFILTER_SCREENSHOT"])


def test_bad_upload_shows_the_service_message(page, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    page.set_input_files("#file", str(notes))
    sync_api.expect(page.locator("#error")).to_contain_text("400: notes.png: not an image file")
    sync_api.expect(page.locator("#history tr")).to_have_count(0)


def test_station_panel_shows_sources_sinks_and_new_parts(fitted, tmp_path):
    """serve --station: the page lists the hot folder and the sinks with their states, a sink that
    is down in red with its backlog, and a part dropped into the hot folder appears in the history."""
    import yaml

    det = fitted[0]
    model = tmp_path / "m.ckpt"
    det.save(model)
    dead = free_port()  # nothing listens here: the webhook stays down
    station = tmp_path / "station.yaml"
    station.write_text(yaml.safe_dump({
        "station": "line-9", "model": str(model), "store": str(tmp_path / "store"), "backoff_max_s": 1.0,
        "sources": [{"kind": "folder", "path": "inbox", "settle_s": 0.1, "poll_s": 0.05}],
        "sinks": [{"kind": "folder", "path": "out.jsonl"}, {"kind": "webhook", "name": "mes",
                                                            "url": f"http://127.0.0.1:{dead}/hook", "timeout_s": 1}]}))
    port = free_port()
    proc = start_server(None, tmp_path / "logs", port, station=station)
    try:
        with _browser_page(port, 900) as pg:
            sync_api.expect(pg.locator("#station-name")).to_have_text("line-9")
            sync_api.expect(pg.locator("#sources")).to_contain_text("folder-inbox")
            (tmp_path / "inbox").mkdir(exist_ok=True)
            (tmp_path / "inbox" / "from_camera.png").write_bytes(planted_defect_png(2))
            sync_api.expect(pg.locator("#history")).to_contain_text("from_camera.png")
            mes = pg.locator("#sinks tr", has_text="mes")
            sync_api.expect(mes.locator("td.down")).to_contain_text("down")
            sync_api.expect(mes.locator("td").nth(6)).to_have_text("1")  # its backlog
            sync_api.expect(pg.locator("#sinks tr", has_text="folder-out.jsonl").locator("td.up")).to_have_text("ok")
    finally:
        proc.terminate()
        proc.wait(10)


def test_operator_loop_review_apply_rollback(fitted, tmp_path):
    """The operator's loop in the page: a rejected part is reviewed as good by an operator, an
    admin applies it (the same part then passes) and rolls back (it is rejected again); the
    versions table and the audit trail name who did each step."""
    det = fitted[0]
    model = tmp_path / "m.ckpt"
    det.save(model)
    keys = tmp_path / "keys.yaml"
    from click.testing import CliRunner

    from costfilter.cli import main

    made = {}
    for name, role in (("olga", "operator"), ("adam", "admin")):
        out = CliRunner().invoke(main, ["keys", "new", name, "--role", role, "--file", str(keys)])
        assert out.exit_code == 0, out.output
        made[name] = out.stdout.strip().splitlines()[-1]
    port = free_port()
    proc = start_server(model, tmp_path / "store", port, extra_args=["--key-file", str(keys)])
    part = tmp_path / "part_17.png"
    part.write_bytes(planted_defect_png(1))

    def signed_in(pg, name):  # another user at the same browser: the tab forgets the key and asks again
        pg.evaluate("sessionStorage.clear()")
        pg.once("dialog", lambda d: d.accept(made[name]))
        pg.reload()
        sync_api.expect(pg.locator("#user")).to_contain_text(f"signed in as {name}")

    try:
        with _browser_page(port, 1400, key=made["olga"]) as pg:
            sync_api.expect(pg.locator("#user")).to_contain_text("signed in as olga")
            pg.set_input_files("#file", str(part))
            sync_api.expect(pg.locator("#decision")).to_have_text("reject")
            row = pg.locator("#review tr", has_text="part_17.png")
            sync_api.expect(row).to_have_count(1)
            row.locator(".note").fill("coating lot 4, looks fine")
            row.locator(".good").click()
            sync_api.expect(row).to_contain_text("good by olga")
            sync_api.expect(pg.locator("#candidates")).to_contain_text("1 confirmed-good image")
            sync_api.expect(pg.locator("#apply")).to_be_disabled()  # an operator cannot apply
            # the admin previews and applies
            signed_in(pg, "adam")
            pg.click("#preview")
            sync_api.expect(pg.locator("#preview-out")).to_contain_text("1 image(s) added")
            pg.click("#apply")
            sync_api.expect(pg.locator("#versions tr").first).to_contain_text("v2 (in service)")
            sync_api.expect(pg.locator("#versions tr").first).to_contain_text("adam")
            pg.set_input_files("#file", str(part))
            sync_api.expect(pg.locator("#decision")).to_have_text("pass")
            pg.click("#rollback")
            sync_api.expect(pg.locator("#versions tr", has_text="v1 (in service)")).to_have_count(1)
            pg.set_input_files("#file", str(part))
            sync_api.expect(pg.locator("#decision")).to_have_text("reject")
            pg.wait_for_function("document.querySelectorAll('#audit tr').length >= 10")  # 9 steps and the keys
            audit = pg.evaluate("[...document.querySelectorAll('#audit tr')].map(r => [...r.cells].map(c => c.textContent))")
            steps = [(user, action, brief) for _, _, user, action, _, brief in reversed(audit)
                     if action not in ("decision", "keys")]
            keys = [brief for _, _, _, action, _, brief in audit if action == "keys"]
            assert len(keys) == 1 and "olga (operator)" in keys[0] and "adam (admin)" in keys[0]
            assert steps == [("service", "version", "served from m.ckpt"), ("service", "activate", "— → v1 (new version)"),
                             ("olga", "verdict", "good"), ("adam", "version", "1 confirmed-good image(s)"),
                             ("adam", "activate", "v1 → v2 (new version)"), ("adam", "activate", "v2 → v1 (rollback)")]
            decisions = [(user, brief.split()[0]) for _, _, user, action, _, brief in reversed(audit) if action == "decision"]
            assert decisions == [("olga", "reject"), ("adam", "pass"), ("adam", "reject")]
            sync_api.expect(pg.locator("#drift")).to_contain_text("uploads")
            pg.screenshot(path=str(tmp_path / "loop.png"), full_page=True)
            if os.environ.get("COSTFILTER_SCREENSHOT_LOOP"):
                shutil.copy(tmp_path / "loop.png", os.environ["COSTFILTER_SCREENSHOT_LOOP"])
    finally:
        proc.terminate()
        proc.wait(10)
    verified = CliRunner().invoke(main, ["audit", "verify", str(tmp_path / "store")])
    assert verified.exit_code == 0 and "10 entries, chain intact" in verified.output
