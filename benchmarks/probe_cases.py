"""The December probe's cases that need real processes, signals, a full disk or dropped
privileges (``shared/design/probe-2026-12.md``), run by the robustness benchmark. The others are
tests (``tests/test_probe.py``). Each case is named after its defect (F3, F14, …) and counts as
handled only when the outcome is the one the probe expected."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: run a command as a user without root's permission-override capabilities (chmod binds then)
NOCAP = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search",
         "--inh-caps=-dac_override,-dac_read_search", "--"]
CLI = [sys.executable, "-m", "costfilter.cli"]


def run_cli(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 600,
            prefix: list[str] | None = None) -> dict[str, Any]:
    """Run ``costfilter ARGS`` in a fresh process (after ``prefix``, e.g. :data:`NOCAP`): its exit
    code, last output line, stdout, stderr, peak RSS and seconds (exit code 124 past ``timeout``)."""
    code = ("import resource, sys; from costfilter.cli import main\n"
            "try:\n    main(sys.argv[1:], standalone_mode=True)\nexcept SystemExit as e:\n    rc = e.code or 0\n"
            "else:\n    rc = 0\n"
            "print('PEAK_RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr)\n"
            "sys.exit(rc)")
    t0 = time.perf_counter()
    try:
        p = subprocess.run([*(prefix or []), sys.executable, "-c", code, *args], check=False, capture_output=True,
                           text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"rc": 124, "last": "timed out", "stdout": "", "stderr": "", "peak_rss_mb": float("nan"),
                "traceback": False, "seconds": time.perf_counter() - t0}
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
    rss = next((float(ln.split()[1]) for ln in lines if ln.startswith("PEAK_RSS_MB")), float("nan"))
    out = [ln for ln in lines if not ln.startswith("PEAK_RSS_MB")]
    return {"rc": p.returncode, "last": out[-1] if out else "", "stdout": p.stdout, "stderr": p.stderr,
            "peak_rss_mb": rss, "traceback": "Traceback" in p.stderr, "seconds": time.perf_counter() - t0}


def case(name: str, tried: int, handled: int, rss: float | None, note: str) -> dict[str, Any]:
    """One row of the robustness table."""
    return {"case": name, "tried": tried, "handled": handled, "peak_rss_mb": rss, "note": note}


def _orphans() -> list[str]:
    """Ray processes whose parent is PID 1 (left behind by a killed driver)."""
    found = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if stat[1] == "1" and ("ray::" in cmd or "ray/_private" in cmd or "raylet" in cmd or "gcs_server" in cmd):
            found.append(cmd.split()[0] if cmd.split() else d)
    return found


def _one_line(r: dict[str, Any], *words: str) -> bool:
    return r["rc"] == 2 and not r["traceback"] and r["last"].startswith("error:") and all(w in r["last"] for w in words)


def nocap_works() -> bool:
    """Whether :data:`NOCAP` can drop the capabilities here (root in a sandbox may not)."""
    return shutil.which("setpriv") is not None and subprocess.run([*NOCAP, "true"], check=False).returncode == 0


def probe_cases(tmp: Path, model: Path, root: Path) -> list[dict[str, Any]]:
    """Every case, as rows of the robustness table."""
    import httpx

    from .service import LOOPBACK, free_port, start_server

    cases = []
    good = sorted((root / "test" / "good").iterdir())
    png = good[0].read_bytes()

    # F3: the store deleted under a running service
    port, store = free_port(), tmp / "f3-store"
    proc = start_server(model, store, port)
    try:
        with httpx.Client(base_url=f"http://{LOOPBACK}:{port}", timeout=60) as c:
            first = [c.post("/predict", files={"file": ("a.png", png, "image/png")}).status_code for _ in range(3)]
            shutil.rmtree(store)
            after = [c.post("/predict", files={"file": ("a.png", png, "image/png")}) for _ in range(2)]
            health = c.get("/health").json()
    finally:
        proc.terminate()
        proc.wait(30)
    proc = start_server(model, store, port)
    try:
        total = httpx.get(f"http://{LOOPBACK}:{port}/results", params={"limit": 0}, timeout=60).json()["total"]
    finally:
        proc.terminate()
        proc.wait(30)
    acked = sum(r.status_code == 200 for r in after)
    ok = first == [200] * 3 and [r.status_code for r in after] == [503, 503] and health["status"] == "degraded"
    cases.append(case("F3 store folder deleted under a running service", 3, int(ok) + int(acked == 0) + int(total == 0),
                      None, f"after the deletion: {[r.status_code for r in after]}, health {health['status']} "
                            f"({health.get('problem')}); after restart {total} rows, {acked} acknowledged"))

    # F14: a full disk, for the service, predict and fit
    tiny = tmp / "tiny"
    tiny.mkdir()
    size_mb = 2 + 2 * model.stat().st_size // 2**20  # room for the store's copy of the model, then filled
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(tiny)],
                             check=False, capture_output=True).returncode == 0
    if mounted:
        try:
            port = free_port()
            # The service keeps a copy of its model in the store (its first model version) and
            # refuses to start without room for it; the disk fills up under the running service.
            proc = start_server(model, tiny / "store", port)
            (tiny / "filler").write_bytes(b"\0" * max(0, shutil.disk_usage(tiny).free - 500_000))
            try:
                with httpx.Client(base_url=f"http://{LOOPBACK}:{port}", timeout=60) as c:
                    resp = c.post("/predict", files={"file": ("a.png", png, "image/png")})
                    health = c.get("/health").json()
            finally:
                proc.terminate()
                proc.wait(30)
            images = tmp / "f14-images"
            images.mkdir()
            for p in good[:20]:
                shutil.copy(p, images / p.name)
            pred = run_cli(["predict", str(model), str(images), "--out", str(tiny / "pred"), "-q"])
            fit = run_cli(["fit", str(root), "--out", str(tiny / "m.ckpt"), "-q"])
            handled = (int(resp.status_code == 507 and "no space" in resp.json()["detail"])
                       + int(health["status"] == "degraded") + int(_one_line(pred, "No space left"))
                       + int(_one_line(fit) and not (tiny / "m.ckpt").exists()))
            cases.append(case("F14 full disk: service, predict, fit", 4, handled, None,
                              f"service {resp.status_code} ({resp.json()['detail'][:90]}), health {health['status']}; "
                              f"predict: {pred['last'][-60:]}; fit: {fit['last'][-60:]}"))
        finally:
            subprocess.run(["umount", str(tiny)], check=False, capture_output=True)
    else:
        cases.append(case("F14 full disk: service, predict, fit", 0, 0, None, "no tmpfs could be mounted here"))

    if nocap_works():
        # F15: a read-only history database; F13: a read-only --out; F12: a file nobody may read
        store = tmp / "f15-store"
        from costfilter.serve.store import HistoryStore

        HistoryStore(store).dispose()
        for f in store.glob("history.sqlite3*"):
            os.chmod(f, 0o444)
        r = run_cli(["serve", str(model), "--port", str(free_port()), "--store", str(store)], timeout=120, prefix=NOCAP)
        cases.append(case("F15 serve on a read-only history database", 1, int(_one_line(r, "for writing")), None,
                          r["last"][:120]))
        ro = tmp / "ro"
        ro.mkdir()
        os.chmod(ro, 0o555)
        rs = [run_cli(["fit", str(root), "--out", str(ro / "m.ckpt"), "-q"], prefix=NOCAP),
              run_cli(["predict", str(model), str(good[0]), "--out", str(ro / "p"), "-q"], prefix=NOCAP),
              run_cli(["predict", str(model), str(good[0]), "--out", str(ro), "-q"], prefix=NOCAP)]
        cases.append(case("F13 read-only --out (fit, predict into a new and an existing folder)", 3,
                          sum(_one_line(r, "cannot write there") and r["seconds"] < 60 for r in rs), None,
                          "; ".join(f"{r['last'][-50:]} ({r['seconds']:.0f} s)" for r in rs)))
        d = tmp / "f12"
        d.mkdir()
        for p in good[:3]:
            shutil.copy(p, d / p.name)
        os.chmod(d / good[1].name, 0)
        r = run_cli(["predict", str(model), str(d), "--out", str(tmp / "f12-out"), "-q"], prefix=NOCAP)
        rows = (tmp / "f12-out" / "results.jsonl").read_text().splitlines() if r["rc"] == 1 else []
        denied = [x for x in rows if '"error"' in x and "Permission denied" in x]
        cases.append(case("F12 an unreadable image in a folder", 1, int(len(rows) == 3 and len(denied) == 1), None,
                          f"{len(rows)} rows, {len(denied)} error row naming 'Permission denied'"))
    else:
        cases.append(case("F12/F13/F15 permission cases", 0, 0, None, "setpriv cannot drop capabilities here"))

    # F18: SIGKILL while predict writes its pictures, then the same command again
    images = tmp / "f18-images"
    images.mkdir()
    for p in sorted((root / "test").rglob("*.png")):
        shutil.copy(p, images / f"{p.parent.name}-{p.name}")
    out = tmp / "f18-out"
    proc = subprocess.Popen([*CLI, "predict", str(model), str(images), "--out", str(out), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = False
    while proc.poll() is None:
        partial = list(out.glob(".costfilter-partial-*/*_overlay.png")) if out.is_dir() else []
        if partial:
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.005)
    proc.wait()
    left = len(list(out.glob(".costfilter-partial-*")))
    again = run_cli(["predict", str(model), str(images), "--out", str(out), "-q"])
    clean = not list(out.glob(".costfilter-partial-*"))
    cases.append(case("F18 SIGKILL during predict's write phase, then the same command", 1,
                      int(killed and again["rc"] == 0 and clean), None,
                      f"killed mid-write: {killed}, partial folders left {left}; rerun: {again['last'][:70]}"))

    # F18: a Ray driver killed before its first flush, then the same command
    try:
        import ray  # noqa: F401

        out = tmp / "f18-ray"
        proc = subprocess.Popen([*CLI, "predict", str(model), str(images), "--engine", "ray", "--actors", "1",
                                 "--out", str(out), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and not (out / ".costfilter-results").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 15
        while _orphans() and time.monotonic() < deadline:
            time.sleep(0.5)
        orphans = _orphans()
        again = run_cli(["predict", str(model), str(images), "--engine", "ray", "--actors", "1", "--out", str(out), "-q"])
        n = len(list(images.iterdir()))
        summary = (again["stdout"].strip().splitlines() or [""])[-1]
        cases.append(case("F18 Ray driver SIGKILLed before its first flush, then the same command", 2,
                          int(again["rc"] == 0 and f"holds {n} rows" in summary) + int(not orphans), None,
                          f"Ray processes left under PID 1 after 15 s: {len(orphans)}; rerun: {summary[:90]}"))
    except ImportError:
        cases.append(case("F18 Ray driver SIGKILLed before its first flush", 0, 0, None, "ray is not installed"))

    # F23: a FIFO as an image; F25: a port in use
    os.mkfifo(tmp / "f.png")
    r = run_cli(["predict", str(model), str(tmp / "f.png"), "--out", str(tmp / "f23"), "-q"], timeout=60)
    cases.append(case("F23 a FIFO passed as an image", 1, int(r["rc"] == 1 and "not a regular file" in r["stderr"]),
                      None, f"{r['last'][:80]} ({r['seconds']:.0f} s)"))
    import socket

    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen(1)
        r = run_cli(["serve", str(model), "--port", str(taken.getsockname()[1]), "--store", str(tmp / "f25")], timeout=60)
    cases.append(case("F25 serve on a port in use", 1, int(_one_line(r, "cannot listen")), None, r["last"][:100]))

    # F24: a live server's small print
    port = free_port()
    proc = start_server(model, tmp / "f24-store", port, env_extra={"COSTFILTER_API_KEY": "k"})
    try:
        with httpx.Client(base_url=f"http://{LOOPBACK}:{port}", timeout=60) as c:
            checks = {
                "HEAD /health": c.head("/health").status_code == 200,
                "HEAD /": c.head("/").status_code == 200,
                "'bearer' in lower case": c.post("/predict", files={"file": ("a.png", png, "image/png")},
                                                 headers={"Authorization": "bearer k"}).status_code == 200,
                "two file parts refused": c.post("/predict", files=[("file", ("a.png", png, "image/png"))] * 2,
                                                 headers={"Authorization": "Bearer k"}).status_code == 400,
                "64 KB path not echoed": len(c.get("/results/" + "x" * 65_000, headers={"Authorization": "Bearer k"})
                                             .text) < 300,
            }
    finally:
        proc.terminate()
        proc.wait(30)
    failed = [k for k, v in checks.items() if not v]
    cases.append(case("F24 service details", len(checks), len(checks) - len(failed), None,
                      "; ".join(checks) + (f" — NOT as intended: {'; '.join(failed)}" if failed else "")))
    return cases


def tiled_memory(tmp: Path, model: Path) -> list[dict[str, Any]]:
    """F19: peak RSS of ``predict --tile 64`` on 4, 9 and 40 MP images (one each)."""
    rows = []
    rng = np.random.default_rng(0)
    for mp, side in ((4, 2000), (9, 3000), (40, 6324)):  # 6324² is just under the default 40 MP limit
        path = tmp / f"big{mp}.png"
        grey = rng.integers(100, 140, (side // 8, side // 8), dtype=np.uint8)
        Image.fromarray(grey).resize((side, side), Image.NEAREST).convert("RGB").save(path, compress_level=1)
        r = run_cli(["predict", str(model), str(path), "--tile", "64", "--out", str(tmp / f"tiles{mp}"), "-q"])
        ok = r["rc"] == 0 and r["peak_rss_mb"] <= 1536
        rows.append(case(f"F19 tiled predict, {mp} MP, --tile 64 (peak RSS ≤ 1.5 GB)", 1, int(ok), r["peak_rss_mb"],
                         f"{side}×{side}, {(-(-side // 64)) ** 2} tiles, {r['seconds']:.0f} s"))
        path.unlink()
    return rows
