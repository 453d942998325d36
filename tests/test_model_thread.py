"""The service loads and scores on one thread, and long jobs run on threads that end with them
(costfilter/model_thread.py says why: a second OpenMP pool made batch-1 scoring 2× slower)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import good_png

from costfilter import model_thread
from costfilter.serve.store import HistoryStore


def test_run_uses_one_thread_whoever_calls_and_hands_back_results_and_errors():
    names = set()
    with ThreadPoolExecutor(4) as pool:
        names |= set(pool.map(lambda _: model_thread.run(lambda: threading.current_thread().name), range(8)))
    names.add(model_thread.run(lambda: threading.current_thread().name))
    assert len(names) == 1 and names.pop().startswith(model_thread.NAME)
    assert model_thread.run(divmod, 7, 2) == (3, 1)
    with pytest.raises(ZeroDivisionError):
        model_thread.run(divmod, 1, 0)
    # A job on the model thread that asks for the model thread runs at once instead of waiting for itself.
    assert model_thread.run(lambda: model_thread.run(lambda: model_thread.on_model_thread())) is True
    assert not model_thread.on_model_thread()


def test_run_apart_runs_on_a_thread_that_has_ended_when_it_returns():
    seen: list[threading.Thread] = []
    assert model_thread.run_apart(lambda x: seen.append(threading.current_thread()) or x + 1, 1) == 2
    assert seen[0] is not threading.current_thread() and not seen[0].is_alive()
    with pytest.raises(ValueError, match="bad"):
        model_thread.run_apart(lambda: (_ for _ in ()).throw(ValueError("bad")))


def test_the_service_loads_and_scores_on_the_model_thread(fitted, tmp_path, monkeypatch):
    """Whatever thread a request comes in on, the model it uses was loaded on the model thread,
    and the upload is inspected there, decoded to stored."""
    import costfilter.loading
    from costfilter.serve import build_app
    from costfilter.serve.inspection import Inspector, Item

    det, root = fitted
    ckpt = tmp_path / "m.ckpt"
    det.save(ckpt)
    where: dict[str, str] = {}
    real_open = costfilter.loading.open_model

    def spy_open(*a, **kw):
        loaded = real_open(*a, **kw)
        where["load"] = threading.current_thread().name
        real_predict = loaded.predict

        def predict(*pa, **pk):
            where["predict"] = threading.current_thread().name
            return real_predict(*pa, **pk)

        loaded.predict = predict
        return loaded

    monkeypatch.setattr(costfilter.loading, "open_model", spy_open)
    build_app(str(ckpt), str(tmp_path / "served"))
    assert where["load"].startswith(model_thread.NAME)

    served = spy_open(ckpt, progress=False)
    where.clear()
    ins = Inspector(served, HistoryStore(tmp_path / "store"))
    ins.on_record.append(lambda row: where.setdefault("stored", threading.current_thread().name))
    with ThreadPoolExecutor(1, thread_name_prefix="request") as pool:
        done = pool.submit(ins.inspect, [Item("a.png", good_png(root))]).result()
    assert type(done[0]).__name__ == "Inspected"
    # The whole upload, decoded to stored, runs there too (no hand-off per stage).
    assert where["predict"].startswith(model_thread.NAME) and where["stored"].startswith(model_thread.NAME)


def test_serve_and_watch_shorten_the_openmp_spin_before_torch_loads_and_keep_a_users_value():
    import os
    import subprocess
    import sys

    probe = ("import os, sys; from click.testing import CliRunner; from costfilter.cli import main; "
             "r = CliRunner().invoke(main, [sys.argv[1], '--help']); assert r.exit_code == 0, r.output; "
             "print(os.environ.get('GOMP_SPINCOUNT'))")

    def spin(command: str, **env: str) -> str:
        base = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
        out = subprocess.run([sys.executable, "-c", probe, command], env={**base, **env}, capture_output=True,
                             text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert spin("serve") == spin("watch") == model_thread.SERVICE_SPINCOUNT
    assert spin("fit") == "None"  # batch commands keep libgomp's default
    assert spin("serve", GOMP_SPINCOUNT="5") == "5"
    import torch  # noqa: F401 - loaded in this process: too late to change libgomp's setting

    assert model_thread.spin_for_service() is False
