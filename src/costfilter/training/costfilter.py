"""Fitting CostFilter-AD: the base (memory bank + templates, or a feature reconstructor), then
the filtering network on synthetic anomalies, selected on a validation split of held-out normal
images with synthetic anomalies (never on test labels)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..bases.coreset import greedy_kcenter
from ..bases.embedding import EmbeddingBase
from ..bases.reconstruction import cosine_map
from ..config import DetectorConfig
from ..data import categories_of
from ..filtering import CostFilterNet
from ..inputs import to_hwc
from ..methods.base import FitJob, FitResult
from ..metrics import auroc, average_precision, binary_curve
from ..synth import AnomalySynthesizer
from ..synth.batch import make_synthesizer, synth_batch
from .loop import config_fingerprint, train
from .losses import filter_loss
from .memory import build_bank

if TYPE_CHECKING:
    from ..methods.costfilter import CostFilterModel

#: λ candidates for the base map's weight, chosen on validation (1.0 = base alone).
BLENDS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def fit_embedding_base(model: CostFilterModel, bank: torch.Tensor, fit_images: torch.Tensor, cfg: DetectorConfig,
                       batch: int) -> torch.Tensor:
    """Install the bank and ``max_templates`` template images chosen by greedy k-centre on their
    global descriptors (diverse normal appearances). Returns each fit image's template index (−1: none)."""
    feats = torch.cat([model.features(fit_images[i : i + batch]) for i in range(0, len(fit_images), batch)])
    chosen = greedy_kcenter(feats.mean(dim=(2, 3)), cfg.costfilter.max_templates, seed=cfg.seed)
    model.base = EmbeddingBase(bank, feats[chosen], cfg.costfilter.n_templates, cfg.memory.search)
    index = torch.full((len(fit_images),), -1, dtype=torch.long)
    index[chosen] = torch.arange(len(chosen))
    return index


def fit_reconstruction_base(model: CostFilterModel, fit_images: torch.Tensor, cfg: DetectorConfig,
                            bar: Callable[[int], None] | None = None) -> list[float]:
    """Train the reconstructor on the normal fit images' features (cosine loss). Returns the loss curve."""
    with torch.no_grad():
        feats = torch.cat([model.features(fit_images[i : i + 32]) for i in range(0, len(fit_images), 32)])
    rec = model.base.reconstructor
    opt = torch.optim.Adam(rec.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(cfg.seed)
    losses = []
    rec.train()
    for _ in range(cfg.costfilter.recon_steps):
        idx = torch.randint(len(feats), (min(16, len(feats)),), generator=g)
        loss = cosine_map(feats[idx], rec(feats[idx])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if bar:
            bar(1)
    rec.eval()
    return losses


class _Validation:
    """Fixed synthetic validation set, its filter inputs cached (backbone and base are frozen)."""

    def __init__(self, model: CostFilterModel, images: np.ndarray, synth: AnomalySynthesizer, n: int, seed: int):
        rng = np.random.default_rng([seed, 10**6])
        idx = np.resize(np.arange(len(images)), n)
        imgs, self.masks = synth_batch(synth, images, idx, rng)
        self.labels = (self.masks.flatten(1).amax(1) > 0).long()
        parts = [model.inputs(imgs[i : i + 8]) for i in range(0, n, 8)]
        self.volume, self.feats, self.init = (torch.cat([p[k] for p in parts]) for k in range(3))
        self.model = model

    def __call__(self) -> dict[str, Any]:
        """Per-λ image AUROC and pixel AP; ``score`` is their mean at the best λ, which is chosen."""
        model = self.model
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model.filter(self.volume[i : i + 16], self.feats[i : i + 16],
                                             self.init[i : i + 16].unsqueeze(1))[0] for i in range(0, len(self.init), 16)])
        per_blend = {}
        for lam in BLENDS:
            maps, scores = model.scorer.finish(model.fuse(logits, self.init, lam))
            i_auroc = auroc(binary_curve(scores.numpy(), self.labels.numpy()))
            p_ap = average_precision(binary_curve(maps.numpy().ravel(), self.masks.numpy().ravel() > 0))
            per_blend[lam] = {"image_auroc": i_auroc, "pixel_ap": p_ap, "score": (i_auroc + p_ap) / 2}
        best = max(BLENDS, key=lambda lam: per_blend[lam]["score"])
        return {**per_blend[best], "blend": best, "chosen": {"blend": best}}


def train_filter(model: CostFilterModel, images: np.ndarray, classes: np.ndarray, template_index: torch.Tensor | None,
                 val_images: np.ndarray, job: FitJob, progress: Callable[[int, float], None] | None = None):
    """Train ``model.filter`` on synthetic anomalies of ``images`` (``(N, S, S, 3)`` uint8 normal
    fit images, ``classes`` their class indices), validating on ``val_images`` (held-out normals).

    Keeps the weights with the best validation score and sets ``model.blend`` to the λ chosen
    there (unless the config fixes it). With ``job.resume``, the training state is kept there.
    """
    cfg = job.config
    tr = cfg.costfilter.training
    synth = make_synthesizer(cfg.synthesis, images)
    validate = _Validation(model, val_images, synth, tr.n_val, cfg.seed)
    opt = torch.optim.Adam(model.filter.parameters(), lr=tr.lr, betas=(0.9, 0.98))
    classes_t = torch.from_numpy(classes).long()

    def step(k: int, rng: np.random.Generator) -> torch.Tensor:
        idx = rng.choice(len(images), size=min(tr.batch_size, len(images)), replace=len(images) < tr.batch_size)
        imgs, masks = synth_batch(synth, images, idx, rng)
        exclude = template_index[idx] if template_index is not None else None
        volume, feats, init = model.inputs(imgs, exclude)
        logits, cls = model.filter(volume, feats, init.unsqueeze(1))
        return filter_loss(logits, masks, cls, classes_t[idx] if cls is not None else None)["total"]

    report = train(model, lambda k: k.startswith("filter."), step, validate, opt, tr, cfg.seed, plateau=True,
                   resume=job.resume, fingerprint=config_fingerprint(cfg.to_dict(), "costfilter"), progress=progress)
    if cfg.costfilter.blend is None:
        model.blend.fill_(report.chosen.get("blend", 0.5))
    else:
        report.chosen["blend"] = cfg.costfilter.blend
    return report


def fit_costfilter(job: FitJob) -> FitResult:
    """CostFilter-AD's fit step: the base first (bank + templates, or a trained reconstructor),
    then the filtering network. The class-aware adaptor gets one output per category."""
    given, model, inputs = job.config, job.model, job.inputs
    cfg = given
    cats = categories_of(list(job.samples))
    if len(cats) != cfg.costfilter.n_classes:
        cfg = dataclasses.replace(cfg, costfilter=dataclasses.replace(cfg.costfilter, n_classes=len(cats)))
        model.filter = CostFilterNet(len(model.groups), model.features.channels, tuple(cfg.costfilter.widths),
                                     len(cats))
        job = dataclasses.replace(job, config=cfg)
    t0 = time.perf_counter()
    images, owners = inputs.load([s.path for s in job.samples], "load fit images")
    val_images = inputs.load(job.validation, "load held-out images")[0]
    template_index = None
    state: dict[str, Any] = {"class_names": cats}
    if cfg.costfilter.base == "memory":
        bank = build_bank(model.features, images, job)[0]  # decoded once, above
        with torch.inference_mode():
            template_index = fit_embedding_base(model, bank, images, cfg, cfg.batch_size)
    else:
        with inputs.bar(total=cfg.costfilter.recon_steps, desc="reconstructor", unit="step") as bar:
            losses = fit_reconstruction_base(model, images, cfg, bar.update)
        state["reconstruction_loss"] = [losses[0], losses[-1]] if losses else []
    with torch.inference_mode():
        init = torch.cat([model.base(model.features(val_images[i : i + 16]))[0] for i in range(0, len(val_images), 16)])
    model.init_scale.fill_(float(init.median()))
    job.timings["base_s"] = time.perf_counter() - t0
    classes = np.array([cats.index(s.category) for s in job.samples])[owners]
    with inputs.loss_bar(cfg.costfilter.training.steps, "train filter") as tick:
        report = train_filter(model, to_hwc(images), classes, template_index, to_hwc(val_images), job, progress=tick)
    job.timings["train_s"] = report.seconds
    bank_rows = model.base.memory.bank.shape[0] if cfg.costfilter.base == "memory" else None
    return FitResult(bank_size=bank_rows, training=report, config=cfg if cfg is not given else None, state=state)
