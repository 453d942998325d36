"""The code blocks of the README and the docs: found, classified and run.

The test suite (``tests/test_docs.py``) runs every block; the site's build lists the ones that are
not run, with their reasons (``reference/not-run.md``). A block says how it runs by its language
and by an optional directive on the line before it::

    <!-- docs: norun REASON -->     never run; REASON is shown on the "Blocks not run" page
    <!-- docs: background -->       a command that serves until stopped: started, waited for on its
                                    ``--port``, stopped when the page is done
    <!-- docs: fails -->            shows an error: must exit non-zero with a one-line message
    <!-- docs: ci -->               the test command: must be exactly the line ``.ci/run`` runs

Languages: ``bash`` is run by bash (``set -e``), ``python`` by this Python; ``yaml``/``json``
blocks with ``title="FILE"`` are written to FILE for the blocks after them; ``text`` right after a
run block is that block's output, checked against what it prints now (numbers, hashes and times
masked; a ``...`` line skips). Every other block needs a ``norun`` reason.

The blocks of a page run in order in one sandbox: the current folder is ``work/``, and beside it
``shared/data`` holds tiny generated sets in the public layouts at the paths the docs use (so
``../shared/data/mpdd/metal_plate`` is a 48-px toy set, not the real one); ``plate.ckpt`` is a
model fitted on it. Long runs are shortened (:data:`SHORTEN`), which the same page lists.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RUN_LANGUAGES = ("bash", "python")
FILE_LANGUAGES = ("yaml", "json")
#: (pattern, replacement, why): the arguments a docs run shrinks so that the suite stays fast
SHORTEN = [
    (r"--time-budget \d+", "--time-budget 3", "training time budgets run for 3 s"),
    (r"--steps [1-9]\d{2,}", "--steps 3", "training runs of hundreds of steps run 3"),
]
_FENCE = re.compile(r"^(\s*)(`{3,})\s*([\w+-]*)\s*(.*)$")
_DIRECTIVE = re.compile(r"<!--\s*docs:\s*(norun|background|fails|ci)\b\s*(.*?)\s*-->")


@dataclasses.dataclass
class Block:
    """One fenced block: where it is, its language, its text and how it is to be run."""

    page: str  # path relative to the repository root
    line: int  # the opening fence's line, from 1
    language: str
    text: str
    title: str | None = None  # a file block's file name
    directive: str | None = None  # norun, background or fails
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def kind(self) -> str:
        """``run``, ``file``, ``output``, ``ci``, ``norun`` or ``unknown`` (no way to run, no reason)."""
        if self.directive in ("norun", "ci"):
            return self.directive
        if self.language in RUN_LANGUAGES:
            return "run"
        if self.language in FILE_LANGUAGES and self.title:
            return "file"
        if self.language == "text":
            return "output"
        return "unknown"


def pages() -> list[Path]:
    """The README and every Markdown page of the site, in a stable order."""
    return [ROOT / "README.md"] + sorted(DOCS.rglob("*.md"))


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of one Markdown file (blocks nested in list items included)."""
    lines = path.read_text().split("\n")
    out: list[Block] = []
    i = 0
    rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, language, rest = m.groups()
        start = i
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(ticks):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1
        title = re.search(r'title="([^"]+)"', rest)
        directive = reason = None
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        d = _DIRECTIVE.search(lines[j]) if j >= 0 else None
        if d:
            directive, reason = d.group(1), d.group(2)
        out.append(Block(rel, start + 1, language.lower(), "\n".join(body) + "\n",
                         title.group(1) if title else None, directive, reason or ""))
    return out


def all_blocks() -> list[Block]:
    return [b for p in pages() for b in blocks(p)]


def shorten(text: str) -> str:
    """``text`` with :data:`SHORTEN` applied."""
    for pattern, replacement, _ in SHORTEN:
        text = re.sub(pattern, replacement, text)
    return text


def mask(text: str) -> list[str]:
    """Lines of output with what changes from run to run masked: keys, hex digests, numbers, paths, spaces."""
    out = []
    for line in text.split("\n"):
        line = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line)
        line = re.sub(r"(?<![\w-])[A-Za-z0-9_-]{32,}(?![\w-])", "K", line)  # keys, tokens: random
        line = re.sub(r"\b[0-9a-f]{8,}\b", "H", line)
        line = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", line)
        line = re.sub(r"(/tmp|/var)\S*", "P", line)
        line = " ".join(line.split())
        if line:
            out.append(line)
    return out


def output_mismatch(shown: str, actual: str) -> str | None:
    """The first shown line (masked) that the actual output lacks, in order; None when all match."""
    have = mask(actual)
    k = 0
    for want in mask(shown):
        if want == "...":
            continue
        while k < len(have) and want not in have[k]:
            k += 1
        if k == len(have):
            return want
        k += 1
    return None


def coverage() -> tuple[int, int, list[Block]]:
    """(blocks counted, blocks run or checked, the ones not run). Output blocks are checked
    against a run; ``file`` blocks are read by the run blocks after them."""
    counted = all_blocks()
    skipped = [b for b in counted if b.kind in ("norun", "unknown")]
    return len(counted), len(counted) - len(skipped), skipped


def not_run_page() -> str:
    """The Markdown of the "Blocks not run" page: every block a docs run leaves out, and why."""
    total, ran, skipped = coverage()
    rows = "\n".join(f"| `{b.where}` | {b.language or '—'} | {b.reason or '**no reason given**'} |"
                     for b in skipped)
    shortened = "\n".join(f"* `{p}` → `{r}`: {why}." for p, r, why in SHORTEN)
    return (f"Of the {total} code blocks in the README and on this site, **{ran}** "
            f"({100 * ran / max(total, 1):.1f} %) are run or checked by the test suite "
            f"(`tests/test_docs.py`) on every CI run; the {len(skipped)} below are not.\n\n"
            "| block | language | why it is not run |\n|---|---|---|\n" + rows + "\n\n"
            "The others run in a sandbox where `../shared/data/...` holds tiny generated sets in the "
            "same layouts (48-pixel images, a few per folder), so the commands and their outputs' "
            "shape are checked, not the numbers. These arguments are shortened there:\n\n" + shortened + "\n")
