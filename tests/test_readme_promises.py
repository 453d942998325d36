"""What the README and the docs promise about the station and the service is what the code does: each test
reads the promise from the README (so an edit of either side fails here) and checks it live."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

pytest.importorskip("fastapi")
pytest.importorskip("paho.mqtt")

from click.testing import CliRunner
from conftest import texture_png
from test_station import model_file, station_file  # noqa: F401 - model_file: a fixture

from costfilter.cli import main
from costfilter.serve import HistoryStore
from costfilter.serve.inspection import Item
from costfilter.station import Station, load_station

_ROOT = Path(__file__).resolve().parent.parent
#: the README and every page of the docs site, where the promises now live
README = "\n".join(p.read_text() for p in [_ROOT / "README.md", *sorted((_ROOT / "docs").rglob("*.md"))])


def _promise(start: str, end: str = "\n* ") -> str:
    """The README's text from ``start`` to ``end``, on one line."""
    i = README.index(start)
    return " ".join(README[i:README.index(end, i + len(start))].split())


def test_health_without_a_key_shows_what_the_readme_says(model_file, tmp_path):  # noqa: F811
    from fastapi.testclient import TestClient

    from costfilter.serve import create_app

    text = _promise("`/health` answers without the API key (for load")
    assert "(they are `source 1`, `sink 1`…)" in text and "(only the method and the version)" in text
    assert "no model file name, hash or thresholds" in text and "cut to its first word" in text
    cfg = load_station(station_file(tmp_path, model_file, [{"kind": "webhook", "url": "http://127.0.0.1:9/h",
                                                            "timeout_s": 1, "name": "mes-10.0.0.5"}]))
    st = Station(cfg)
    with TestClient(create_app(st.detector, st.store, allowed_hosts=["testserver"], station=st, api_key="k",
                               model_name="plate.ckpt")) as c:
        public = c.get("/health").json()
    assert [s["name"] for s in public["station"]["sources"]] == ["source 1"]
    assert [s["name"] for s in public["station"]["sinks"]] == ["sink 1"]
    assert set(public["model"]) - {"costfilter", "api_key_required"} == {"method", "version"}
    assert all(" " not in s["state"] for s in public["station"]["sinks"] + public["station"]["sources"])
    assert "10.0.0.5" not in str(public) and "plate.ckpt" not in str(public)


#: each refusal the README lists for `watch --check`, as (README words, station change, error words)
REFUSALS = [
    ("a `done` or `failed` folder that is the watched folder", {"sources": [{"kind": "folder", "path": "in",
                                                                            "failed": "in"}]},
     "must not be the watched folder"),
    ("or holds it", {"sources": [{"kind": "folder", "path": "in/x", "done": "in"}]}, "lies inside its own done"),
    ("`done` and `failed` inside each other", {"sources": [{"kind": "folder", "path": "in", "done": "o",
                                                            "failed": "o/f"}]}, "must be separate folders"),
    ("two sources on the same or nested folders", {"sources": [{"kind": "folder", "path": "a", "name": "a"},
                                                               {"kind": "folder", "path": "a/b", "name": "b"}]},
     "watch the same files"),
    ("a source's `done`/`failed` overlapping another source's folder",
     {"sources": [{"kind": "folder", "path": "a", "name": "a", "failed": "b/f"},
                  {"kind": "folder", "path": "b", "name": "b"}]}, "overlap"),
    ("MQTT wildcards (`+`, `#`) in a publish topic",
     {"sinks": [{"kind": "mqtt", "host": "127.0.0.1", "topic": "a/+/b"}]}, "wildcards"),
    ("a zero or negative `timeout_s`", {"sinks": [{"kind": "webhook", "url": "http://127.0.0.1:9/", "timeout_s": 0}]},
     "timeout_s must be a positive"),
]


@pytest.mark.parametrize("words, change, error", REFUSALS, ids=[r[0][:30] for r in REFUSALS])
def test_watch_check_refuses_what_the_readme_lists(model_file, tmp_path, words, change, error):  # noqa: F811
    text = _promise("* **`watch --check` refuses**")
    assert words in text
    path = station_file(tmp_path, model_file, [{"kind": "folder", "path": "r.jsonl"}])
    path.write_text(yaml.safe_dump(yaml.safe_load(path.read_text()) | change))
    r = CliRunner().invoke(main, ["watch", str(path), "--check"])
    assert r.exit_code == 2 and error in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_the_message_kinds_the_readme_names_are_the_ones_sent(model_file, tmp_path):  # noqa: F811
    """The README names each kind of message a sink gets; the station sends each of them."""
    text = _promise("* **Other messages** on the same sinks")
    named = set(re.findall(r"`(\w+)`", text)) & {"drift_alarm", "alarm", "anchor", "error", "inspection"}
    assert named == {"drift_alarm", "alarm", "anchor"}
    assert '{"kind": "error"' in _promise("* **Each file once, each part an answer.**")
    cfg = load_station(station_file(tmp_path, model_file, [{"kind": "folder", "path": "r.jsonl"}]))
    st = Station(cfg, store=HistoryStore(cfg.store))
    st.inspector.inspect([Item("a.png", texture_png(1))])  # an inspection, and the trail's first entry
    st.inspector.report_error("x.png", "not an image file", "in")
    st.watchdog._alarm("sink r", "stalled", raised=True)
    assert st.watchdog.anchor(force=True) is not None
    kinds = {m["payload"]["kind"] for m in st.store.pending(cfg.sinks[0].name)}
    assert kinds == {"inspection", "error", "alarm", "anchor"}
