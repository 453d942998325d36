"""Fitting CostFilter-AD: the base (memory bank + templates, or a feature reconstructor), then
the filtering network on synthetic anomalies, selected on a validation split of held-out normal
images with synthetic anomalies (never on test labels)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..atomic import write_with
from ..bases.coreset import greedy_kcenter
from ..bases.embedding import EmbeddingBase
from ..bases.reconstruction import cosine_map
from ..config import DetectorConfig
from ..errors import CostfilterError
from ..methods.costfilter import CostFilterModel
from ..metrics import auroc, average_precision, binary_curve
from ..synth import AnomalySynthesizer, FolderTextures, ProceduralTextures
from .losses import filter_loss

#: λ candidates for the base map's weight, chosen on validation (1.0 = base alone).
BLENDS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


@dataclass
class TrainReport:
    """What training did: steps, time, loss curve, validation scores, chosen λ."""

    steps: int = 0
    seconds: float = 0.0
    stopped_by: str = "steps"
    losses: list[float] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    blend: float = 0.5
    resumed_from: int = 0


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


def make_synthesizer(cfg: DetectorConfig, normals: np.ndarray) -> AnomalySynthesizer:
    """The configured texture source (a folder, or offline procedural + other normal images)."""
    cf = cfg.costfilter
    textures = FolderTextures(cf.texture_dir) if cf.texture_dir else ProceduralTextures(list(normals[:64]))
    return AnomalySynthesizer(textures, foreground_threshold=cf.foreground_threshold)


def synth_batch(synth: AnomalySynthesizer, images: np.ndarray, idx: np.ndarray, rng: np.random.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic anomalies on ``images[idx]``: ``(B, 3, S, S)`` uint8 and ``(B, S, S)`` float masks."""
    pairs = [synth(rng, images[i]) for i in idx]
    imgs = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(np.stack([p[1] for p in pairs])).float()
    return imgs, masks


class _Validation:
    """Fixed synthetic validation set, its filter inputs cached (backbone and base are frozen)."""

    def __init__(self, model: CostFilterModel, images: np.ndarray, synth: AnomalySynthesizer, n: int, seed: int):
        rng = np.random.default_rng([seed, 10**6])
        idx = np.resize(np.arange(len(images)), n)
        imgs, self.masks = synth_batch(synth, images, idx, rng)
        self.labels = (self.masks.flatten(1).amax(1) > 0).long()
        parts = [model.inputs(imgs[i : i + 8]) for i in range(0, n, 8)]
        self.volume, self.feats, self.init = (torch.cat([p[k] for p in parts]) for k in range(3))

    def evaluate(self, model: CostFilterModel) -> dict[str, Any]:
        """Per-λ image AUROC and pixel AP; ``score`` is their mean at the best λ."""
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model.filter(self.volume[i : i + 16], self.feats[i : i + 16],
                                             self.init[i : i + 16].unsqueeze(1))[0] for i in range(0, len(self.init), 16)])
        out: dict[str, Any] = {"per_blend": {}}
        for lam in BLENDS:
            maps, scores = model.scorer.finish(model.fuse(logits, self.init, lam))
            i_auroc = auroc(binary_curve(scores.numpy(), self.labels.numpy()))
            p_ap = average_precision(binary_curve(maps.numpy().ravel(), self.masks.numpy().ravel() > 0))
            out["per_blend"][lam] = {"image_auroc": i_auroc, "pixel_ap": p_ap, "score": (i_auroc + p_ap) / 2}
        best = max(BLENDS, key=lambda lam: out["per_blend"][lam]["score"])
        out.update(blend=best, **out["per_blend"][best])
        return out


def _save_state(path: Path, model: CostFilterModel, opt: torch.optim.Optimizer, best: dict[str, torch.Tensor],
                meta: dict[str, Any]) -> None:
    tensors = {f"model.{k}": v for k, v in model.filter.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in best.items()})
    opt_state = opt.state_dict()
    for pid, st in opt_state["state"].items():
        for name, v in st.items():
            tensors[f"opt.{pid}.{name}"] = torch.as_tensor(v).clone()
    meta = dict(meta, lr=opt.param_groups[0]["lr"])
    write_with(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                                           metadata={"meta": json.dumps(meta)}))


def _load_state(path: Path, model: CostFilterModel, opt: torch.optim.Optimizer, fingerprint: str
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["meta"])
    except (SafetensorError, OSError, KeyError, ValueError):
        raise CostfilterError(f"{path}: not a costfilter training state") from None
    if meta.get("config_sha256") != fingerprint:
        raise CostfilterError(f"{path}: training state was saved under another configuration; "
                              "delete it or use the same options")
    tensors = load_file(str(path))
    model.filter.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)
    for group in opt.param_groups:
        group["lr"] = meta["lr"]
    return best, meta


def train_filter(model: CostFilterModel, images: np.ndarray, classes: np.ndarray, template_index: torch.Tensor | None,
                 val_images: np.ndarray, cfg: DetectorConfig, *, resume: Path | None = None,
                 progress: Callable[[int, float], None] | None = None) -> TrainReport:
    """Train ``model.filter`` on synthetic anomalies of ``images`` (``(N, S, S, 3)`` uint8 normal
    fit images, ``classes`` their class indices), validating on ``val_images`` (held-out normals).

    Stops at ``steps`` or ``time_budget_s``; keeps the weights with the best validation score and
    sets ``model.blend`` to the λ chosen there. With ``resume``, the training state is saved there
    at every validation and picked up again if the file exists.
    """
    cf = cfg.costfilter
    synth = make_synthesizer(cfg, images)
    val = _Validation(model, val_images, synth, cf.n_val, cfg.seed)
    opt = torch.optim.Adam(model.filter.parameters(), lr=cf.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=2)
    report = TrainReport()
    best_state = {k: v.clone() for k, v in model.filter.state_dict().items()}
    best_score, step = -1.0, 0
    # How long to train may change between runs (that is what resuming is for); nothing else may.
    same = cfg.to_dict()
    for key in ("steps", "time_budget_s"):
        same["costfilter"].pop(key)
    fingerprint = hashlib.sha256(json.dumps(same, sort_keys=True).encode()).hexdigest()
    if resume is not None and resume.is_file():
        best_state, meta = _load_state(resume, model, opt, fingerprint)
        step, best_score = meta["step"], meta["best_score"]
        report.best_step, report.blend, report.resumed_from = meta["best_step"], meta["blend"], step
        report.losses, report.validation = meta["losses"], meta["validation"]
    t0 = time.perf_counter()
    classes_t = torch.from_numpy(classes).long()

    def validate(at: int) -> float:
        """Score the validation set, record it, keep the weights and λ if they are the best so far."""
        nonlocal best_score, best_state
        v = val.evaluate(model)
        report.validation.append({"step": at, "score": v["score"], "blend": v["blend"],
                                  "image_auroc": v["image_auroc"], "pixel_ap": v["pixel_ap"]})
        if v["score"] > best_score:
            best_score, report.best_step, report.blend = v["score"], at, v["blend"]
            best_state = {k: t.clone() for k, t in model.filter.state_dict().items()}
        return v["score"]

    while step < cf.steps:
        if cf.time_budget_s and time.perf_counter() - t0 > cf.time_budget_s:
            report.stopped_by = "time budget"
            break
        model.filter.train()
        rng = np.random.default_rng([cfg.seed, step])  # per-step seed: resuming replays the same data
        idx = rng.choice(len(images), size=min(cf.batch_size, len(images)), replace=len(images) < cf.batch_size)
        imgs, masks = synth_batch(synth, images, idx, rng)
        exclude = template_index[idx] if template_index is not None else None
        volume, feats, init = model.inputs(imgs, exclude)
        logits, cls = model.filter(volume, feats, init.unsqueeze(1))
        loss = filter_loss(logits, masks, cls, classes_t[idx] if cls is not None else None)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        report.losses.append(float(loss.detach()))
        if progress:
            progress(1, report.losses[-1])
        if step % cf.val_every == 0 or step == cf.steps:
            sched.step(validate(step))
            if resume is not None:
                _save_state(resume, model, opt, best_state, {
                    "step": step, "best_score": best_score, "best_step": report.best_step, "blend": report.blend,
                    "losses": report.losses, "validation": report.validation, "config_sha256": fingerprint})
    if not report.validation or report.validation[-1]["step"] != step:
        validate(step)
    model.filter.load_state_dict(best_state)
    model.filter.eval()
    if cf.blend is None:
        model.blend.fill_(report.blend)
    else:
        report.blend = cf.blend
    report.steps = step
    report.seconds = time.perf_counter() - t0
    return report
