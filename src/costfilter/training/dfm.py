"""Training DFM end to end: adapter, temperature and a score-to-logit map, on synthetic anomalies
of normal images; the weights are selected on held-out normal images with synthetic anomalies."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DetectorConfig
from ..methods.dfm import DFMModel
from ..metrics import auroc, average_precision, binary_curve
from .costfilter import make_synthesizer, synth_batch


def _validate(model: DFMModel, images: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        maps, scores = zip(*(model(images[i : i + 16]) for i in range(0, len(images), 16)))
    maps, scores = torch.cat(maps), torch.cat(scores)
    labels = (masks.flatten(1).amax(1) > 0).numpy()
    i_auroc = auroc(binary_curve(scores.numpy(), labels))
    p_ap = average_precision(binary_curve(maps.numpy().ravel(), masks.numpy().ravel() > 0))
    return {"image_auroc": i_auroc, "pixel_ap": p_ap, "score": (i_auroc + p_ap) / 2}


def train_dfm(model: DFMModel, images: np.ndarray, val_images: np.ndarray, cfg: DetectorConfig,
              progress: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train on ``images`` (``(N, S, S, 3)`` uint8 normal); returns a report (losses, validation, best step)."""
    d = cfg.dfm
    synth = make_synthesizer(cfg, images)
    rng_val = np.random.default_rng([cfg.seed, 10**6])
    val_x, val_m = synth_batch(synth, val_images, np.resize(np.arange(len(val_images)), d.n_val), rng_val)
    params = [p for n, p in model.named_parameters() if not n.startswith("features.")]
    opt = torch.optim.Adam(params, lr=d.lr)
    first = _validate(model, val_x, val_m)  # step 0 = plain hard-ish matching: training must beat it
    report: dict[str, Any] = {"losses": [], "validation": [{"step": 0, **first}], "best_step": 0}
    best, best_state = first["score"], {k: v.clone() for k, v in model.state_dict().items()}
    t0 = time.perf_counter()
    step = 0
    grid = model.features.grid
    while step < d.steps and not (d.time_budget_s and time.perf_counter() - t0 > d.time_budget_s):
        model.train()
        rng = np.random.default_rng([cfg.seed, step])
        idx = rng.choice(len(images), size=min(d.batch_size, len(images)), replace=len(images) < d.batch_size)
        x, m = synth_batch(synth, images, idx, rng)
        with torch.no_grad():
            feats = model.features(x)
        target = F.adaptive_avg_pool2d(m.unsqueeze(1), grid).squeeze(1)  # anomalous fraction per patch
        logits = F.softplus(model.scale) * (model.patch_scores(feats) - model.shift)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        report["losses"].append(loss.item())
        if progress:
            progress(1, report["losses"][-1])
        if step % d.val_every == 0 or step == d.steps:
            v = _validate(model, val_x, val_m)
            report["validation"].append({"step": step, **v})
            if v["score"] > best:
                best, report["best_step"] = v["score"], step
                best_state = {k: t.clone() for k, t in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    report.update(steps=step, seconds=time.perf_counter() - t0, temperature=model.log_tau.exp().item())
    return report
