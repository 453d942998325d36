"""Drift alarms on real data: how often a stationary line raises one, how soon a shift does.

    python -m benchmarks.drift [--data ../shared/data] [--seeds 5] [--force]

Writes benchmarks/results/drift.json.

A memory bank is fitted on magnetic_tile's good training images (default settings; its
calibration scores are the fit images' leave-one-out scores). Its test **good** images are the
line's parts: they are scored once as they are, and once per shift — brighter (×1.25), darker
(×0.8) and blurred (Gaussian, σ = 2 px at the source size) — which is how a light, exposure or
focus change reaches a camera.

* **Stationary**: for each seed, a stream of 10,000 parts drawn with replacement from the
  unshifted scores goes through :class:`~costfilter.drift.DriftMonitor` at its defaults
  (baseline 500, window 200, α = 1e-4 per check over all statistics); every window alarm is a
  false alarm. The one-off check of the baseline against the calibration images is counted
  apart: it compares the line with the leave-one-out calibration scores, which these test good
  images do differ from.
* **Shifted**: 1,000 unshifted parts (the baseline and more), then parts drawn from a shifted
  set; the number of shifted parts until the first window alarm (its statistic named), per seed.

The test defect images play no part. The monitor's limits are fixed in advance by its null
distributions (see :mod:`costfilter.drift`), never tuned on these streams.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from costfilter.tables import format_table

from .common import write_json

CATEGORY = "magnetic_tile/magnetic_tile"
SHIFTS = {"brighter ×1.25": ("brightness", 1.25), "darker ×0.8": ("brightness", 0.8), "blur σ 2 px": ("blur", 2.0)}
STATIONARY = 10_000
LEAD_IN = 1_000
MAX_AFTER = 5_000


def _shifted(path: Path, kind: str, amount: float) -> np.ndarray:
    img = Image.open(path).convert("RGB")
    if kind == "brightness":
        img = ImageEnhance.Brightness(img).enhance(amount)
    else:
        img = img.filter(ImageFilter.GaussianBlur(amount))
    return np.asarray(img)


def _scores(det: Any, images: list[Any]) -> np.ndarray:
    preds = det.predict(images)
    return np.array([[p.score, p.typical_score, p.decision != "pass"] for p in preds], dtype=np.float64)


def _feed(mon: Any, rows: np.ndarray) -> list[Any]:
    out = []
    for s, t, f in rows:
        out += mon.observe(float(s), float(t), "reject" if f else "pass")
    return out


def calibration_reference_alarms(cal_s: list[float], cal_t: list[float], rows: np.ndarray, window: int,
                                 alpha: float) -> int:
    """The design the monitor does not use, for comparison: each window compared with the
    calibration images themselves (KS and PSI of both scores, at the same α split), counting
    crossings as the monitor does."""
    from costfilter.drift import STATISTICS, _Reference, ks_limit, ks_statistic, psi, psi_limit

    a = alpha / len(STATISTICS)
    refs = [_Reference.of(cal_s), _Reference.of(cal_t)]
    limits = [(ks_limit(len(r.sorted), window, a), psi_limit(r.counts, window, a)) for r in refs]
    active, alarms = [False] * 4, 0
    for end in range(window, len(rows) + 1):
        w = rows[end - window : end]
        values = []
        for col, (r, (kl, pl)) in enumerate(zip(refs, limits)):
            values += [ks_statistic(r.sorted, w[:, col]) >= kl, psi(r.edges, r.shares, w[:, col]) >= pl]
        alarms += sum(v and not was for v, was in zip(values, active))
        active = values
    return alarms


def run(data: Path, json_out: Path, *, seeds: int = 5, force: bool = False) -> dict[str, Any]:
    from costfilter.api import Detector
    from costfilter.config import DetectorConfig
    from costfilter.data.mvtec import load_mvtec
    from costfilter.drift import DriftConfig, DriftMonitor

    samples = load_mvtec(data / CATEGORY)
    t0 = time.perf_counter()
    det = Detector(DetectorConfig(seed=0), progress=False).fit(samples)
    fit_s = time.perf_counter() - t0
    good = [s.path for s in samples if s.split == "test" and s.label == 0]
    st, t = det.state, det.thresholds
    flagged_share = float(np.mean([t.decide(s) != "pass" for s in st.calibration_scores]))
    cfg = DriftConfig()

    def monitor() -> Any:
        return DriftMonitor(st.calibration_scores, st.calibration_typical, flagged_share, cfg)

    base = _scores(det, good)
    stationary = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        mon = monitor()
        stream = base[rng.integers(0, len(base), STATIONARY)]
        raised = _feed(mon, stream)
        alarms = [a for a in raised if not a.statistic.startswith("baseline")]
        stationary.append({"seed": seed, "images": STATIONARY, "alarms": len(alarms),
                           "statistics": sorted({a.statistic for a in alarms}),
                           "baseline_alarms": sorted(a.statistic for a in raised if a.statistic.startswith("baseline")),
                           "baseline_ks_score": mon.values["baseline_ks_score"],
                           "baseline_ks_typical": mon.values["baseline_ks_typical"],
                           "baseline_limit": mon.limits["baseline_ks_score"],
                           "alarms_against_calibration": calibration_reference_alarms(
                               st.calibration_scores, st.calibration_typical, stream, cfg.window, cfg.alpha)})
        print(f"stationary seed {seed}: {len(alarms)} window alarm(s) in {STATIONARY} images; baseline against "
              f"calibration: KS {mon.values['baseline_ks_score']:.3f} / {mon.values['baseline_ks_typical']:.3f} "
              f"(limit {mon.limits['baseline_ks_score']:.3f})", flush=True)
    shifted = {}
    for name, (kind, amount) in SHIFTS.items():
        rows = _scores(det, [_shifted(p, kind, amount) for p in good])
        runs = []
        for seed in range(seeds):
            rng = np.random.default_rng(1000 + seed)
            mon = monitor()
            lead = [a for a in _feed(mon, base[rng.integers(0, len(base), LEAD_IN)])
                    if not a.statistic.startswith("baseline")]
            first = None
            for i in range(1, MAX_AFTER + 1):
                raised = _feed(mon, rows[rng.integers(0, len(rows), 1)])
                if raised:
                    first = {"after": i, "statistics": sorted(a.statistic for a in raised)}
                    break
            runs.append({"seed": seed, "lead_in_alarms": len(lead), "first_alarm": first})
        after = [r["first_alarm"]["after"] for r in runs if r["first_alarm"]]
        shifted[name] = {"runs": runs, "median_after": float(np.median(after)) if after else None,
                         "max_after": max(after) if after else None, "caught": len(after),
                         "flagged_share": float(rows[:, 2].mean()), "median_score": float(np.median(rows[:, 0])),
                         "median_typical": float(np.median(rows[:, 1]))}
        print(f"{name}: first alarm after {after} shifted images", flush=True)
    from scipy.stats import ks_2samp

    payload = {"benchmark": "drift", "seed": 0, "set": CATEGORY, "fit_s": fit_s,
               "n_calibration": len(st.calibration_scores),
               "n_test_good": len(good), "config": {"window": cfg.window, "baseline": cfg.baseline, "alpha": cfg.alpha},
               "test_good_vs_calibration": {
                   "ks_score": float(ks_2samp(base[:, 0], st.calibration_scores).statistic),
                   "ks_score_p": float(ks_2samp(base[:, 0], st.calibration_scores).pvalue),
                   "ks_typical": float(ks_2samp(base[:, 1], st.calibration_typical).statistic),
                   "ks_typical_p": float(ks_2samp(base[:, 1], st.calibration_typical).pvalue)},
               "unshifted": {"flagged_share": float(base[:, 2].mean()), "median_score": float(np.median(base[:, 0])),
                             "median_typical": float(np.median(base[:, 1]))},
               "calibration": {"flagged_share": flagged_share, "median_score": float(np.median(st.calibration_scores)),
                               "median_typical": float(np.median(st.calibration_typical))},
               "stationary": stationary, "shifted": shifted}
    write_json(json_out, payload, force)
    print(table(payload))
    return payload


def table(p: dict[str, Any]) -> str:
    """False alarms on the stationary streams, then how soon each shift is caught."""
    n = sum(r["images"] for r in p["stationary"])
    k = sum(r["alarms"] for r in p["stationary"])
    rows = [["none (stationary)", f"{k} false window alarm(s) in {n:,} images ({k / n * 10_000:.2f} per 10,000)",
             "—", "—", f"{p['unshifted']['flagged_share']:.3f}"]]
    for name, s in p["shifted"].items():
        stats = sorted({x for r in s["runs"] if r["first_alarm"] for x in r["first_alarm"]["statistics"]})
        rows.append([name, f"caught in {s['caught']} of {len(s['runs'])} runs", "—" if s["median_after"] is None else
                     f"{s['median_after']:.0f} (max {s['max_after']})", ", ".join(stats), f"{s['flagged_share']:.3f}"])
    c = sum(r["alarms_against_calibration"] for r in p["stationary"])
    rows.insert(1, ["none, compared with the calibration images instead (not used)",
                    f"{c} false alarm(s) in {n:,} images ({c / n * 10_000:.2f} per 10,000)", "—", "—", "—"])
    base = [r["baseline_alarms"] for r in p["stationary"]]
    v = p["test_good_vs_calibration"]
    note = (f"\n\nBaseline against the calibration images (checked once per stream): alarm in "
            f"{sum(bool(b) for b in base)} of {len(base)} stationary streams. The test good images themselves "
            f"differ from the leave-one-out calibration scores: KS {v['ks_score']:.3f} (p = {v['ks_score_p']:.4f}) "
            f"for image scores, {v['ks_typical']:.3f} (p = {v['ks_typical_p']:.3f}) for typical patches.")
    return format_table(["shift", "alarms", "shifted images until the first alarm (median)", "first statistic(s)",
                         "flagged share of the shifted parts"], rows) + note


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/drift.json"))
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    run(args.data, args.json, seeds=args.seeds, force=args.force)
