"""Training DFM end to end: adapter, temperature and a score-to-logit map (and, with
``dfm.train_backbone``, the tapped backbone stages), on synthetic anomalies of normal images; the
weights are selected on held-out normal images with synthetic anomalies."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ..inputs import to_hwc
from ..methods.base import FitJob, FitResult
from ..metrics import auroc, average_precision, binary_curve
from ..synth.batch import make_synthesizer, synth_batch
from .loop import config_fingerprint, train
from .memory import build_bank

if TYPE_CHECKING:
    from ..methods.dfm import DFMModel


def embed_bank(model: DFMModel, images: torch.Tensor, ids: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """The bank rows again, from the current features: row ``k`` is patch ``ids[k]``
    (``image · h · w + y · w + x``) of the decoded fit ``images`` ``(N, 3, S, S)``."""
    per_image = model.features.grid ** 2
    order = ids.argsort()
    sorted_ids = ids[order]
    rows = torch.empty(len(ids), model.bank.shape[1])
    with torch.no_grad():
        for i in range(0, len(images), batch):
            lo, hi = torch.searchsorted(sorted_ids, torch.tensor([i * per_image, (i + batch) * per_image])).tolist()
            if lo == hi:
                continue
            feats = model.features(images[i : i + batch])
            flat = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
            rows[order[lo:hi]] = flat[sorted_ids[lo:hi] - i * per_image]
    return rows


def _validation(model: DFMModel, images: torch.Tensor, masks: torch.Tensor,
                before: Callable[[], None] | None = None) -> Callable[[], dict[str, Any]]:
    labels = (masks.flatten(1).amax(1) > 0).numpy()

    def validate() -> dict[str, Any]:
        if before is not None:
            before()
        model.eval()
        with torch.no_grad():
            maps, scores = zip(*(model(images[i : i + 16]) for i in range(0, len(images), 16)))
        maps, scores = torch.cat(maps), torch.cat(scores)
        i_auroc = auroc(binary_curve(scores.numpy(), labels))
        p_ap = average_precision(binary_curve(maps.numpy().ravel(), masks.numpy().ravel() > 0))
        return {"image_auroc": i_auroc, "pixel_ap": p_ap, "score": (i_auroc + p_ap) / 2,
                "chosen": {"temperature": model.log_tau.exp().item()}}

    return validate


def fit_dfm(job: FitJob) -> FitResult:
    """DFM's fit step: the bank as for the memory bank, then adapter + temperature trained end to
    end; step 0 (plain matching) is validated too, so training has to beat it."""
    cfg, model, inputs = job.config, job.model, job.inputs
    tr = cfg.dfm.training
    decoded = inputs.load([s.path for s in job.samples], "load fit images")[0]
    built = build_bank(model.features, decoded, job)
    model.set_bank(built.bank)
    e2e = bool(model.backbone_params)
    images = to_hwc(decoded)
    val_images = to_hwc(inputs.load(job.validation, "load held-out images")[0])
    synth = make_synthesizer(cfg.synthesis, images)
    val_x, val_m = synth_batch(synth, val_images, np.resize(np.arange(len(val_images)), tr.n_val),
                               np.random.default_rng([cfg.seed, 10**6]))
    params = [p for n, p in model.named_parameters() if not n.startswith("features.")]
    groups = [{"params": params, "lr": tr.lr}]
    if e2e:
        groups.append({"params": model.backbone_params, "lr": tr.lr * cfg.dfm.backbone_lr})
    trained = model.trained_feature_keys
    grid = model.features.grid

    def rebank() -> None:  # the bank follows the features: embedded again before each validation
        model.set_bank(embed_bank(model, decoded, built.ids))

    def step(k: int, rng: np.random.Generator) -> torch.Tensor:
        idx = rng.choice(len(images), size=min(tr.batch_size, len(images)), replace=len(images) < tr.batch_size)
        x, m = synth_batch(synth, images, idx, rng)
        with torch.set_grad_enabled(e2e):
            feats = model.features(x)
        target = F.adaptive_avg_pool2d(m.unsqueeze(1), grid).squeeze(1)  # anomalous fraction per patch
        logits = F.softplus(model.scale) * (model.patch_scores(feats) - model.shift)
        return F.binary_cross_entropy_with_logits(logits, target)

    def keep(k: str) -> bool:  # what training keeps of its best step
        # A trained backbone keeps its weights and the bank embedded with them.
        return (not k.startswith("features.") and (e2e or k != "bank")) or k in trained

    with inputs.loss_bar(tr.steps, "train dfm") as tick:
        report = train(model, keep, step, _validation(model, val_x, val_m, rebank if e2e else None),
                       torch.optim.Adam(groups), tr, cfg.seed,
                       validate_first=True, resume=job.resume, fingerprint=config_fingerprint(cfg.to_dict(), "dfm"),
                       progress=tick)
    report.chosen["temperature"] = model.log_tau.exp().item()
    job.timings["train_s"] = report.seconds
    return FitResult(bank_size=len(model.bank), training=report)
