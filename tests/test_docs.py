"""The docs run: every code block of the README and of the site (``docs/``) is executed here, page
by page in a sandbox, and every output block is checked against what its command prints now.
How a block runs, and the sandbox, are described in ``docs/docs_blocks.py``.

``DOCS_UPDATE=1 pytest tests/test_docs.py`` fills each empty output block from its run (a block
that holds something, such as a real run's output, is checked, never rewritten).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_mvtec, make_tiny_clip, save

from costfilter.toy_images import planted_defect, texture
from docs import docs_blocks

PAGES = [p for p in docs_blocks.pages() if any(b.kind in ("run", "file") for b in docs_blocks.blocks(p))]
#: the share of blocks the issue asks to be run or checked
MIN_COVERAGE = 0.95
TIMEOUT_S = 300
SETS = ("mpdd/metal_plate", "magnetic_tile/magnetic_tile", "battery_weld/welding")


def _hf_models(home: Path) -> None:
    """Tiny random stand-ins for the Hugging Face folders the docs name (no weights offline)."""
    import torch
    import transformers as t

    torch.manual_seed(0)
    common = {"hidden_size": 32, "num_hidden_layers": 12, "num_attention_heads": 2, "intermediate_size": 64}
    t.Dinov2WithRegistersModel(t.Dinov2WithRegistersConfig(num_register_tokens=4, patch_size=14, **common)
                               ).save_pretrained(home / "models" / "dinov2-with-registers-base")
    make_tiny_clip(home / "models" / "clip-vit-base-patch16", patch_size=16)
    # MuSc's preset wants a patch-14 CLIP with 24 blocks (ViT-L/14-336): the same tiny model so shaped
    make_tiny_clip(home / "models" / "clip-vit-large-patch14-336", patch_size=14, vision_layers=24)


def _env(sandbox: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COSTFILTER_", "PYTEST_", "RAY_"))}
    env.update(HOME=str(sandbox / "home"), PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
               OMP_NUM_THREADS="1", COLUMNS="200", PYTHONPATH=str(docs_blocks.ROOT))  # benchmarks: from a checkout
    return env


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    """The sandbox every page starts from: the toy sets, new images, a fitted ``plate.ckpt``."""
    root = tmp_path_factory.mktemp("docs-base")
    for k, name in enumerate(SETS):  # 10 good training images, 3 good and 3 + 3 defective tests each
        family, category = name.split("/")
        make_mvtec(root / "shared" / "data" / family, categories=(category,), n_train=10, seed=k,
                   defects=("scratch", "break"))
    work = root / "work"
    rng = np.random.default_rng(7)
    for i in range(3):
        save(texture(rng), work / "new_parts" / f"part{i}.png")
    save(planted_defect(rng)[0], work / "new_parts" / "part3.png")
    shutil.copy(work / "new_parts" / "part3.png", work / "part.png")
    (root / "home").mkdir()
    if _uses_hf_models():
        pytest.importorskip("transformers")
        _hf_models(root / "home")
    run = subprocess.run(["costfilter", "fit", "../shared/data/mpdd/metal_plate", "--out", "plate.ckpt", "--quiet"],
                         cwd=work, env=_env(root), capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert run.returncode == 0, run.stderr
    return root


def _uses_hf_models() -> bool:
    return any("$HOME/models" in b.text or "~/models" in b.text for b in docs_blocks.all_blocks())


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, where: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = log.read_text()
            pytest.fail(f"{where}: the background command exited ({proc.returncode}) before port {port} opened:\n{out}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"{where}: nothing listened on port {port} within 120 s")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(docs_blocks.ROOT)) for p in PAGES])
def test_page_runs(page: Path, base: Path, tmp_path: Path) -> None:
    sandbox = tmp_path / "sandbox"
    shutil.copytree(base, sandbox, symlinks=True)
    work = sandbox / "work"
    env = _env(sandbox)
    background: list[subprocess.Popen] = []
    last_output: str | None = None
    updates: list[tuple[docs_blocks.Block, str]] = []
    try:
        for i, block in enumerate(docs_blocks.blocks(page)):
            kind = block.kind
            if kind == "file":
                target = work / block.title
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(block.text)
                continue
            if kind == "output":
                assert last_output is not None, f"{block.where}: an output block with no run block before it"
                if os.environ.get("DOCS_UPDATE") and not block.text.strip():
                    updates.append((block, last_output))  # only empty blocks: a real run's output stays
                else:
                    missing = docs_blocks.output_mismatch(block.text, last_output)
                    assert missing is None, (f"{block.where}: the shown output has a line the command no longer "
                                             f"prints:\n  {missing}\nwhat it printed:\n{last_output}")
                last_output = None
                continue
            last_output = None
            if kind != "run":
                continue
            text = docs_blocks.shorten(block.text)
            if block.language == "python":
                script = work / f".docs_block_{i}.py"
                script.write_text(text)
                cmd = [sys.executable, script.name]
            else:
                cmd = ["bash", "-e", "-o", "pipefail", "-c", text]
            if block.directive == "background":
                ports = [int(p) for p in re.findall(r"--port (\d+)", text)]
                assert ports, f"{block.where}: a background block needs a --port to wait for"
                with socket.socket() as probe:  # else the wait below would find someone else's server
                    assert probe.connect_ex(("127.0.0.1", ports[0])) != 0, f"{block.where}: port {ports[0]} is in use"
                log = sandbox / f"background-{i}.log"  # a file, not a pipe: a chatty server never blocks on it
                with open(log, "w") as sink:
                    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                            start_new_session=True)
                background.append(proc)
                _wait_for_port(ports[0], proc, log, block.where)
                continue
            t0 = time.monotonic()
            run = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
            print(f"{block.where}: {time.monotonic() - t0:.1f} s")  # shown with -s or on a failure
            # the sandbox's own folders read as the home folder they stand for
            stdout, stderr = (_home(x, sandbox) for x in (run.stdout, run.stderr))
            output = stdout + stderr
            assert "Traceback" not in output, f"{block.where}: a traceback:\n{output}"
            if block.directive == "fails":
                assert run.returncode != 0, f"{block.where}: was to fail, but exited 0:\n{output}"
                last = stderr.strip().split("\n")[-1]
                assert last.startswith("error: "), f"{block.where}: no one-line error at the end:\n{stderr}"
            else:
                assert run.returncode == 0, f"{block.where}: exit {run.returncode}:\n{output}"
            last_output = stdout if stdout.strip() else output
    finally:
        for proc in background:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    if updates:
        _rewrite(page, updates)


def _home(text: str, sandbox: Path) -> str:
    """``text`` with the sandbox's paths written as the user's: ``~/work`` is the current folder."""
    return text.replace(str(sandbox / "work"), "~/work").replace(str(sandbox / "home"), "~").replace(str(sandbox), "~")


def _rewrite(page: Path, updates: list[tuple[docs_blocks.Block, str]]) -> None:
    """Replace each output block's body with what its command printed (``DOCS_UPDATE=1``)."""
    lines = page.read_text().split("\n")
    for block, output in sorted(updates, key=lambda u: -u[0].line):
        start = block.line  # index of the first body line (the fence is at line - 1)
        end = start
        while not lines[end].strip().startswith("```"):
            end += 1
        indent = lines[block.line - 1][: len(lines[block.line - 1]) - len(lines[block.line - 1].lstrip())]
        lines[start:end] = [indent + x if x else x for x in output.rstrip("\n").split("\n")]
    page.write_text("\n".join(lines))


def test_at_least_95_percent_of_blocks_run_and_the_rest_say_why() -> None:
    total, ran, skipped = docs_blocks.coverage()
    unknown = [b.where for b in skipped if b.kind == "unknown"]
    assert not unknown, f"blocks with no way to run and no <!-- docs: norun REASON -->: {unknown}"
    assert all(b.reason for b in skipped)
    assert ran / total >= MIN_COVERAGE, f"only {ran} of {total} blocks run ({ran / total:.1%})"


def test_the_readme_test_command_is_what_ci_runs() -> None:
    ci = [b for b in docs_blocks.all_blocks() if b.kind == "ci"]
    assert [b.page for b in ci] == ["README.md"]
    script = (docs_blocks.ROOT / ".ci" / "run").read_text().strip().split("\n")
    assert ci[0].text.strip() == script[-1].strip()


def test_the_block_parser_reads_directives_titles_and_nested_blocks(tmp_path: Path) -> None:
    page = tmp_path / "probe.md"
    page.write_text("x\n\n<!-- docs: norun a GPU -->\n```bash\nnvidia-smi\n```\n\n* item\n\n  ```yaml title=\"s.yaml\"\n"
                    "  a: 1\n  ```\n\n```text\nout\n```\n\n```nginx\nserver {}\n```\n")
    got = [(b.kind, b.reason, b.title, b.text) for b in docs_blocks.blocks(page)]
    assert got == [("norun", "a GPU", None, "nvidia-smi\n"), ("file", "", "s.yaml", "a: 1\n"),
                   ("output", "", None, "out\n"), ("unknown", "", None, "server {}\n")]


def test_output_check_masks_numbers_and_hashes_but_not_words() -> None:
    shown = "saved plate.ckpt (sha256 fadf9dc23587…)\n...\n| chosen | 0.01 | 36.3 |\n"
    assert docs_blocks.output_mismatch(shown, "x\nsaved plate.ckpt (sha256 0123abcd4567…)\ny\n| chosen | 0.05 | 1 |") is None
    assert docs_blocks.output_mismatch(shown, "saved model.ckpt (sha256 0123abcd4567…)\n| chosen | 1 | 2 |") is not None
    assert docs_blocks.output_mismatch("b\na\n", "a\nb\n") == "a"  # in order
    assert docs_blocks.output_mismatch("PDSjLWZBCtQEkRixrm8aW9B7HxZu9FvYDzY9A6wyqas\n",
                                       "ON2ywzOs-X92B-ja8kSrqI3za_wM35vd9whMIS0k4EM\n") is None  # a random key
