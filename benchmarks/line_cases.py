"""The December line probe's cases L1–L22 (``shared/design/probe-line-2026-12.md``) as rows of the
robustness table. Each case's reproduction is a regression test in ``tests/test_probe_line.py``
(named ``test_Lnn_…``: live stations, a real Mosquitto broker, real files, signals and SQL edits);
this runs them in a fresh pytest process and reports, per case, how many of its checks were
tried and handled as the probe expected, with the test's own name as what was checked."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from .probe_cases import case

TESTS = Path(__file__).resolve().parent.parent / "tests" / "test_probe_line.py"


def line_cases(timeout: float = 1800) -> list[dict[str, Any]]:
    """One row per probe case L1–L22 (a test named for several cases counts for each)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        subprocess.run([sys.executable, "-m", "pytest", str(TESTS), "-p", "no:cacheprovider", "-q", "-n", "0",
                        f"--junitxml={report}"], check=False, capture_output=True, text=True, timeout=timeout,
                       cwd=TESTS.parent.parent)
        root = ET.parse(report).getroot()
    rows: dict[int, dict[str, Any]] = {n: {"tried": 0, "handled": 0, "names": [], "skipped": 0} for n in range(1, 23)}
    for tc in root.iter("testcase"):
        name = tc.get("name", "")
        ids = [int(x) for x in re.findall(r"L(\d\d)", name.split("[")[0])]
        skipped = tc.find("skipped") is not None
        failed = tc.find("failure") is not None or tc.find("error") is not None
        for n in ids:
            r = rows[n]
            r["tried"] += 1
            r["skipped"] += int(skipped)
            r["handled"] += int(not failed and not skipped)
            r["names"].append(re.sub(r"^test_(L\d\d_)+", "", name).replace("_", " "))
    out = []
    for n, r in rows.items():
        what = "; ".join(dict.fromkeys(r["names"]))[:150]
        if r["skipped"]:
            what += f" ({r['skipped']} skipped: a component is not installed)"
        out.append(case(f"L{n} (line probe)", r["tried"], r["handled"], None, what or "no test found"))
    return out
