"""The documentation site, built with ``mkdocs build --strict`` and read in headless Chromium with
every request off this machine refused: the navigation, a tutorial, the API reference from the
docstrings, the generated CLI reference, and search."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
pytest.importorskip("mkdocs", reason="the docs extra is not installed")

from test_web import ARGS, CHROMIUM

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.xdist_group("docs-site"),
              pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built site, served over HTTP on loopback (search needs a server: it fetches its index)."""
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    run = subprocess.run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "-q", "-d", str(out)],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    handler = functools.partial(_Quiet, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield out, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the test's output is the assertions, not an access log
        pass


@pytest.fixture
def browser_page(site):
    _, base = site
    outside: list[str] = []

    def route(r):
        host = urlparse(r.request.url).hostname
        if r.request.url.startswith(("data:", "blob:")) or host == "127.0.0.1":
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        pg = browser.new_page(viewport={"width": 1300, "height": 900})
        pg.set_default_timeout(20_000)
        pg.route("**/*", route)
        yield pg, base
        browser.close()
    assert outside == [], f"the site asked for files off this machine: {outside}"


def test_the_site_builds_strict_and_holds_no_link_off_the_machine_for_assets(site):
    out, _ = site
    html = (out / "index.html").read_text()
    assert "fonts.googleapis" not in html and "fonts.gstatic" not in html
    for page in out.rglob("*.html"):
        text = page.read_text()
        for tag in ("<script src=\"http", "<link href=\"http", "stylesheet\" href=\"http"):
            assert tag not in text, f"{page.relative_to(out)} loads {tag}…"


def test_navigation_leads_to_a_tutorial_and_it_reads(browser_page):
    pg, base = browser_page
    pg.goto(base + "index.html")
    assert pg.locator("h1").first.inner_text().strip(" ¶\n") == "costfilter"
    pg.locator("nav.md-nav--primary a", has_text="Put it on a line").first.click()
    pg.wait_for_url("**/tutorials/line.html")
    assert pg.locator("h1").first.inner_text().strip(" ¶\n") == "Put it on a line"
    code = pg.locator("pre code").first.inner_text()
    assert "station:" in code and "sources:" in code
    assert pg.locator("a", has_text="station reference").count() >= 1


def test_the_api_reference_is_built_from_the_docstrings(browser_page):
    pg, base = browser_page
    pg.goto(base + "reference/api.html")
    body = pg.locator("article").inner_text()
    assert "Detector" in body and "fit" in body and "predict" in body
    from costfilter.api import Detector

    words = (Detector.predict.__doc__ or "").split()[:4]  # "Score image files or": plain words, no markup
    assert len(words) == 4 and " ".join(words) in " ".join(body.split())


def test_the_cli_and_config_references_are_generated_from_the_code(browser_page):
    pg, base = browser_page
    pg.goto(base + "reference/cli.html")
    body = pg.locator("article").inner_text()
    for command in ("costfilter fit", "costfilter predict", "costfilter watch", "costfilter audit verify"):
        assert command in body
    assert "--false-reject" in body and "--time-budget" in body
    pg.goto(base + "reference/config.html")
    body = pg.locator("article").inner_text()
    assert "bank_size" in body and "4096" in body


def test_search_finds_threshold(browser_page):
    pg, base = browser_page
    pg.goto(base + "index.html")
    box = pg.locator("input.md-search__input")
    results = pg.locator(".md-search-result__item")
    # The search index loads in a web worker; a query typed before it is ready finds nothing, so
    # type again until it answers (on a busy machine the worker can take seconds to start).
    for _ in range(12):
        box.click()
        box.fill("")
        box.press_sequentially("threshold")
        try:
            results.first.wait_for(timeout=5_000)
            break
        except sync_api.TimeoutError:
            continue
    results.first.wait_for()
    assert results.count() >= 3
    assert "threshold" in pg.locator(".md-search-result").inner_text().lower()
    with pg.expect_navigation():
        results.first.locator("a").first.click()
    assert "threshold" in pg.locator("article").inner_text().lower()


def test_blocks_not_run_are_listed_with_their_reasons(site):
    out, _ = site
    text = (out / "reference" / "not-run.html").read_text()
    assert "are run or checked by the test suite" in text and "needs a CUDA GPU" in text
    assert "no reason given" not in text
