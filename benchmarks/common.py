"""Pieces every benchmark shares: throughput of model vs backbone alone, JSON output."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from costfilter.api import Detector
from costfilter.atomic import check_writable, write_text
from costfilter.config import DetectorConfig
from costfilter.data import Sample, load_dataset
from costfilter.data.loader import iter_batches
from costfilter.data.mvtec import load_mvtec
from costfilter.provenance import environment, peak_rss_mb
from costfilter.results import Evaluation
from costfilter.speed import throughput


def load_tensors(paths: Sequence[Path], size: int) -> torch.Tensor:
    """Decode and resize images once, so throughput measures the model, not PNG decoding."""
    return torch.cat([b.images for b in iter_batches(list(paths), size, 64)])


def write_json(path: Path, payload: dict[str, Any], force: bool) -> None:
    """Add provenance and write ``payload`` atomically (benchmark results are regenerated, so
    an existing file is overwritten only with ``force`` or when it is one of ours)."""
    if path.exists() and not force:
        try:
            ours = json.loads(path.read_text()).get("benchmark") == payload.get("benchmark")
        except (OSError, ValueError):
            ours = False
        if not ours:
            check_writable(path, force)
    payload = dict(payload, environment=environment())
    write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


#: Folder where finished child results are kept, keyed by their spec, so an interrupted
#: benchmark run picks up where it stopped (``--resume``); None = no keeping.
CHILD_CACHE: Path | None = None


def run_child(kind: str, spec: dict[str, Any], tag: str, reuse: bool = True) -> dict[str, Any]:
    """Run ``python -m benchmarks.child KIND SPEC`` in a fresh process (so its time and peak
    RSS are its own) and return the JSON it prints last; a failure raises with the child's stderr.
    With :data:`CHILD_CACHE` set, the result is kept there, and (``reuse``) a result already kept
    for the same spec is returned instead of running it again."""
    import hashlib

    key = hashlib.sha256(json.dumps([kind, spec], sort_keys=True).encode()).hexdigest()[:20]
    kept = CHILD_CACHE / f"{key}.json" if CHILD_CACHE is not None else None
    if reuse and kept is not None and kept.is_file():
        print(f"  {tag}: kept from an earlier run", file=sys.stderr, flush=True)
        return json.loads(kept.read_text())
    t0 = time.perf_counter()
    # The child imports ``benchmarks`` from the checkout, whatever the caller's working folder.
    proc = subprocess.run([sys.executable, "-m", "benchmarks.child", kind, json.dumps(spec)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode:
        raise RuntimeError(f"benchmark child failed ({tag}):\n{proc.stderr[-3000:]}")
    print(f"  {tag}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if kept is not None:
        write_text(kept, json.dumps(result))
    return result


def load_samples(data: str | list[str]) -> list[Sample]:
    """A benchmark's data: ``"elpv"``, or a list of MVTec-layout category folders and ``"elpv"``
    (one model on all)."""
    parts = [data] if isinstance(data, str) else data
    return [s for d in parts for s in (load_dataset("elpv", "elpv") if d == "elpv" else load_mvtec(Path(d)))]


def per_defect_auroc(ev: Evaluation) -> dict[str, dict[str, float]]:
    """Per category with several defect types: I-AUROC of each type against the good images."""
    from costfilter.metrics import image_metrics

    out = {}
    for cat in ev.per_category:
        recs = [r for r in ev.samples if r.category == cat]
        good = [r.score for r in recs if r.label == 0]
        types = sorted({r.defect for r in recs if r.label == 1})
        if len(types) > 1:
            out[cat] = {t: image_metrics(good + [r.score for r in recs if r.defect == t],
                                         [0] * len(good) + [1] * sum(r.defect == t for r in recs))["image_auroc"]
                        for t in types}
    return out


def fit_evaluate(spec: dict[str, Any]) -> dict[str, Any]:
    """One timed fit and evaluation, the unit every benchmark table is made of.

    ``spec``: ``config`` (a :class:`DetectorConfig` dict), ``data`` (see :func:`load_samples`),
    optional ``n_train`` (seeded subset of the fit images), ``test_paths`` (only these test
    images), ``eval`` (default true), ``speed``
    (images for the throughput figures; 0 = none), ``figures`` (folder for per-category pictures)
    and ``tag``. Returns times, peak RSS, metrics and, with ``speed``, the throughput against the
    backbone alone and the fit time against the backbone's time over the same fit images.
    """
    import numpy as np

    from costfilter.data import split_of
    from costfilter.metrics import image_metrics

    cfg = DetectorConfig.from_dict(spec["config"])
    samples = load_samples(spec["data"])
    train, test = split_of(samples, "train"), split_of(samples, "test")
    if spec.get("test_paths"):
        wanted = set(spec["test_paths"])
        test = [s for s in test if str(s.path) in wanted]
    if spec.get("n_train"):
        order = np.random.default_rng(cfg.seed).permutation(len(train))[: spec["n_train"]]
        train = [train[i] for i in sorted(order)]
    t0 = time.perf_counter()
    det = Detector(cfg, progress=False)
    if not det.zero_shot:
        det.fit(train)
    training = det.state.training.to_dict() if det.state.training else None
    out: dict[str, Any] = {"fit_s": time.perf_counter() - t0, "stages_s": det.state.timings,
                           "peak_rss_fit_mb": peak_rss_mb(), "n_train": len(train),
                           "bank_size": det.state.bank_size, "training": training}
    if det.thresholds is not None:
        out["thresholds"] = {"image": det.thresholds.image, "pixel": det.thresholds.pixel,
                             "n_calibration": det.thresholds.n_calibration, "source": det.thresholds.source}
        out["operating_points"] = [dataclasses.asdict(p) for p in det.state.operating_points]
    if spec.get("eval", True):
        ev = det.evaluate(test, keep_maps=bool(spec.get("figures")))
        pooled = image_metrics([r.score for r in ev.samples], [r.label for r in ev.samples])
        out.update(per_category=ev.per_category, mean=ev.mean, pooled_image=pooled, test_s=ev.seconds,
                   images_per_s=ev.images_per_second, per_defect_image_auroc=per_defect_auroc(ev),
                   scores=[{"category": r.category, "label": r.label, "score": r.score} for r in ev.samples])
        if spec.get("figures"):
            from .figures import category_figures

            for cat in ev.per_category:
                category_figures(det, ev, cat, Path(spec["figures"]), spec.get("tag", cat))
    if spec.get("speed"):
        speed = throughput(det, load_tensors([s.path for s in test[: spec["speed"]]], cfg.features.image_size))
        out["throughput"] = speed
        out["fit_over_backbone"] = out["fit_s"] / (len(train) / speed["backbone_images_per_s"])
    if spec.get("image_scores"):
        out["image_scores"] = image_score_study(det, train, test, cfg.seed)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def image_score_study(det: Detector, train: list[Sample], test: list[Sample], seed: int) -> dict[str, Any]:
    """The memory bank's two image scores side by side (``top_percent`` vs PatchCore's
    ``reweighted_max``), from the same patch distances.

    ``validation``: I-AUROC on the fit images alone, each scored leave-one-out, as it is against
    a synthetic anomaly pasted into itself (also scored leave-one-out): no test label involved.
    ``test``: I-AUROC on the test split, per category, reported only.
    """
    import numpy as np

    from costfilter.metrics import image_metrics
    from costfilter.synth import AnomalySynthesizer, ProceduralTextures

    model = det.model
    size = det.config.features.image_size

    def both(images: torch.Tensor, exclude: torch.Tensor | None) -> tuple[list[float], list[float]]:
        with torch.inference_mode():
            feats = model.features(images)
            patch = model.memory(feats, exclude)
            top = model.scorer(patch)[1]
            rew = model.memory.reweighted_max(feats, patch, model.neighbours, exclude)
        return top.tolist(), rew.tolist()

    fit = load_tensors([s.path for s in train], size)
    hwc = fit.permute(0, 2, 3, 1).contiguous().numpy()
    synth = AnomalySynthesizer(ProceduralTextures(list(hwc[:64])), normal_fraction=0.0)
    rng = np.random.default_rng([seed, 7])
    bad = torch.from_numpy(np.stack([synth(rng, im)[0] for im in hwc])).permute(0, 3, 1, 2).contiguous()
    val: dict[str, list[float]] = {"top_percent": [], "reweighted_max": []}
    for images in (fit, bad):
        for i in range(0, len(images), 32):
            t, r = both(images[i : i + 32], torch.arange(i, min(i + 32, len(images))))
            val["top_percent"] += t
            val["reweighted_max"] += r
    labels = [0] * len(fit) + [1] * len(bad)
    out: dict[str, Any] = {"validation": {k: image_metrics(v, labels)["image_auroc"] for k, v in val.items()},
                           "n_validation": len(labels), "test": {}}
    for cat in dict.fromkeys(s.category for s in test):
        items = [s for s in test if s.category == cat]
        tops, rews = [], []
        for batch in iter_batches([s.path for s in items], size, 32):
            t, r = both(batch.images, None)
            tops += t
            rews += r
        y = [s.label for s in items]
        out["test"][cat] = {"top_percent": image_metrics(tops, y)["image_auroc"],
                            "reweighted_max": image_metrics(rews, y)["image_auroc"]}
    return out
