"""Fitting CostFilter-AD: the base (memory bank + templates, or a feature reconstructor), then the
filtering network on synthetic anomalies, then λ, the filter's weight in the final map.

* **Cross-fitting.** The filter must learn from base maps like those it will see at test time.
  A training image is therefore scored against the bank and templates *without its own patches*
  (memory base), or by a reconstructor trained on the *other* half of the fit images
  (reconstruction base). Fitting the filter on maps of images the base already knows teaches it
  a scale that test images do not have.
* **A pool of samples.** Backbone and base are frozen, so each synthetic sample's filter inputs
  (cost volume, features, base map) are computed once and reused every epoch; the CPU then
  spends its time on the filter.
* **λ by a rule.** On a validation set of held-out normal images with synthetic anomalies, the
  final map ``λ·filter + (1 − λ)·base`` is scored (mean of AUPRO and pixel AP) for λ on a grid
  near 0. The best λ is kept only if its gain over the base alone is larger than its bootstrap
  noise; otherwise λ = 0 and the model is its base. No test label is used.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...config import DetectorConfig
from ...data import categories_of
from ...inputs import to_hwc
from ...metrics import aupro, average_precision, binary_curve
from ...synth import AnomalySynthesizer
from ...synth.batch import make_synthesizer, synth_batch
from ...training.bank import build_bank, grow_bank
from ...training.job import FitJob, FitResult
from ...training.loop import config_fingerprint, train
from .embedding_base import EmbeddingBase
from .filter_net import CostFilterNet
from .losses import filter_loss
from .model import CostFilterModel, blend, blend_for
from .reconstruction_base import cosine_map

#: The filter's weight candidates: a fine grid near 0, as the reference's hand-set values are;
#: validation chooses among those up to ``costfilter.max_blend`` (all are reported in benchmarks).
#: λ is the weight itself (``blend_on: filter``) or one minus it (``blend_on: base``), see
#: :func:`~costfilter.methods.costfilter.model.blend_for`.
LAMBDAS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
#: validation maps are compared at this size (fast, and every λ is judged on the same pixels)
VAL_SIZE = 64
#: bootstrap resamples of the validation set for the λ rule, and the one-sided level
BOOTSTRAP, LEVEL = 200, 0.05


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
        idx = torch.randint(len(feats), (min(16, len(feats)),), generator=g, device="cpu").to(feats.device)
        loss = cosine_map(feats[idx], rec(feats[idx])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if bar:
            bar(1)
    rec.eval()
    return losses


@dataclass
class Pool:
    """Synthetic samples with their filter inputs computed once: cost volumes and features in
    float16, normalised base maps ``(N, h, w)``, masks ``(N, S, S)``, class indices ``(N,)``, all
    on the model's device."""

    volume: torch.Tensor
    feats: torch.Tensor
    init: torch.Tensor
    masks: torch.Tensor
    classes: torch.Tensor

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.volume[idx].float(), self.feats[idx].float(), self.init[idx]

    def __len__(self) -> int:
        return len(self.init)


def build_pool(model: CostFilterModel, images: np.ndarray, classes: np.ndarray, exclude: np.ndarray | None,
               synth: AnomalySynthesizer, n: int, seed: int, batch: int = 16,
               tick: Callable[[int], Any] | None = None) -> Pool:
    """``n`` synthetic samples drawn evenly over ``images`` (``(N, S, S, 3)`` uint8), each base map
    computed without the image's own patches when ``exclude`` gives its fit image; ``tick(k)``
    after each batch of ``k`` (a progress bar: the reference preset's volumes take minutes on a CPU)."""
    rng = np.random.default_rng(seed)
    dev = model.init_scale.device
    order = np.resize(rng.permutation(len(images)), n)
    parts: list[tuple[torch.Tensor, ...]] = []
    masks = []
    for i in range(0, n, batch):
        idx = order[i : i + batch]
        imgs, m = synth_batch(synth, images, idx, rng)
        ex = torch.from_numpy(exclude[idx]).to(dev) if exclude is not None else None
        volume, feats, init = model.inputs(imgs, ex)
        parts.append((volume.half(), feats.half(), init))
        masks.append(m > 0)
        if tick:
            tick(len(idx))
    return Pool(*(torch.cat([p[k] for p in parts]) for k in range(3)), torch.cat(masks).to(dev),
                torch.from_numpy(classes[order]).long().to(dev))


def _score(maps: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean of AUPRO and pixel AP of ``(N, S, S)`` maps against bool masks."""
    m, g = maps.float().cpu().numpy(), masks.cpu().numpy()
    return 0.5 * (aupro(m, g) + average_precision(binary_curve(m.ravel(), g.ravel())))


class Validation:
    """The validation pool scored at :data:`VAL_SIZE` for every λ, mixed by the model's own rule
    (:func:`~costfilter.methods.costfilter.model.blend`); ``__call__`` is the training loop's
    validation (the best λ's score, filter weights kept by it). λ values are in the model's
    convention (``blend_on``); ``base_only`` is the λ that gives the base alone."""

    def __init__(self, model: CostFilterModel, pool: Pool, max_blend: float = 1.0):
        self.model, self.pool = model, pool
        on = model.blend_on
        self.lambdas = tuple(blend_for(w, on) for w in LAMBDAS if w <= max_blend)
        self.base_only = blend_for(0.0, on)
        masks = F.interpolate(pool.masks[:, None].float(), size=(VAL_SIZE, VAL_SIZE), mode="nearest")[:, 0] > 0
        self.masks = masks.cpu()

    def maps(self) -> dict[float, torch.Tensor]:
        """λ → validation maps ``(N, VAL_SIZE, VAL_SIZE)`` (smoothing as at inference, at this size)."""
        model, pool = self.model, self.pool
        model.eval()
        with torch.no_grad():
            logits, inits = [], []
            for i in range(0, len(pool), 32):
                volume, feats, init = pool.batch(np.arange(i, min(i + 32, len(pool))))
                logits.append(model.filter(volume, feats, init.unsqueeze(1))[0])
                inits.append(init)
            logits, init = torch.cat(logits), torch.cat(inits)
            prob = F.interpolate(logits.softmax(1)[:, 1:2], size=(VAL_SIZE, VAL_SIZE), mode="bilinear")[:, 0]
            base = F.interpolate(init[:, None], size=(VAL_SIZE, VAL_SIZE), mode="bilinear")[:, 0]
        return {lam: blend(prob, base, lam, model.blend_on).float().cpu() for lam in self.lambdas}

    def __call__(self) -> dict[str, Any]:
        scores = {lam: _score(m, self.masks) for lam, m in self.maps().items()}
        best = max(self.lambdas, key=lambda lam: scores[lam])
        return {"score": scores[best], "blend": best, "base_score": scores[self.base_only],
                "top_score": scores[self.lambdas[-1]]}

    def choose_blend(self, seed: int, tick: Callable[[int], Any] | None = None) -> dict[str, Any]:
        """λ by the rule: the validation-best λ if its gain over the base alone (``base_only``) is
        above its bootstrap noise (the paired resampled gain's 5th percentile is > 0), else the
        base alone."""
        maps = self.maps()
        scores = {lam: _score(m, self.masks) for lam, m in maps.items()}
        best = max(self.lambdas, key=lambda lam: scores[lam])
        rng = np.random.default_rng([seed, 17])
        n = len(self.masks)
        gains = []
        for _ in range(BOOTSTRAP):
            if tick:
                tick(1)
            idx = rng.integers(0, n, n)
            if not self.masks[idx].any():
                continue
            gains.append(_score(maps[best][idx], self.masks[idx]) - _score(maps[self.base_only][idx], self.masks[idx]))
        low, high = (float(np.quantile(gains, LEVEL)), float(np.quantile(gains, 1 - LEVEL))) if gains else (0.0, 0.0)
        alone = self.base_only
        keep = best != alone and low > 0
        gain = scores[best] - scores[alone]
        why = (f"λ = {best:g}: validation AUPRO/P-AP gain {gain:+.4f} over the base alone, "
               f"{100 * (1 - 2 * LEVEL):.0f} % bootstrap interval [{low:+.4f}, {high:+.4f}]")
        if not keep:
            why = f"λ = {alone:g} (the base alone): the best, {why}, is within its noise" if best != alone else \
                f"λ = {alone:g} (the base alone): no λ on the grid beat it on validation ({scores[alone]:.4f})"
        return {"blend": best if keep else alone, "best_on_validation": best, "gain": gain, "gain_low": low,
                "gain_high": high, "per_blend": {str(k): v for k, v in scores.items()}, "why": why}


def init_filter_from(model: CostFilterModel, path: str) -> dict[str, Any]:
    """Load another CostFilter-AD checkpoint's filter weights into ``model.filter`` (transfer).
    Every weight but the class head must have the same shape; the class head is kept only when
    the class counts agree. Returns what was loaded, for the training report."""
    from ...checkpoint import load_checkpoint
    from ...errors import CheckpointError
    from ...integrity import signing_key

    tensors, config, _, digest = load_checkpoint(path, signing_key())
    if config.get("method") != "costfilter":
        raise CheckpointError(f"{path}: --init-filter needs a CostFilter-AD checkpoint, not '{config.get('method')}'")
    own = model.filter.state_dict()
    given = {k.removeprefix("filter."): v for k, v in tensors.items() if k.startswith("filter.")}
    loaded = {}
    for key, value in own.items():
        theirs = given.get(key)
        if theirs is not None and theirs.shape == value.shape:
            loaded[key] = theirs
        elif not key.startswith("classifier."):
            found = "missing" if theirs is None else f"{tuple(theirs.shape)}"
            raise CheckpointError(f"{path}: its filter does not fit this one (different K, widths or backbone): "
                                  f"{key} is {found}, needs {tuple(value.shape)}")
    model.filter.load_state_dict(loaded, strict=False)
    return {"from": str(path), "sha256": digest, "class_head": any(k.startswith("classifier.") for k in loaded)}


def fit_costfilter(job: FitJob) -> FitResult:
    """CostFilter-AD's fit step: base, cross-fitted sample pool, filter training, λ rule."""
    given, model, inputs = job.config, job.model, job.inputs
    cfg, cf = given, given.costfilter
    cats = categories_of(list(job.samples))
    if len(cats) != cf.n_classes:  # the class-aware adaptor needs one output per category
        cfg = dataclasses.replace(cfg, costfilter=dataclasses.replace(cf, n_classes=len(cats)))
        cf = cfg.costfilter
        model.filter = CostFilterNet(model.filter.reduce[0].in_channels, model.features.channels, tuple(cf.widths),
                                     len(cats)).to(job.compute.device)
        job = dataclasses.replace(job, config=cfg)
    t0 = time.perf_counter()
    images, owners = inputs.load([s.path for s in job.samples], "load fit images")
    val_images = inputs.load(job.validation, "load held-out images")[0]
    row_classes = np.array([cats.index(s.category) for s in job.samples])[owners]
    reconstruction_loss: list[float] = []
    rng = np.random.default_rng(cfg.seed)
    train_rows = np.arange(len(images))
    exclude = None
    if cf.base == "memory":
        bank, bank_owners, _, _ = build_bank(model.features, images, job, row_owner=owners)
        pool_rows = np.sort(rng.permutation(len(images))[: cf.max_templates])
        with torch.inference_mode():
            templates = torch.cat([model.features(images[pool_rows[i : i + 32]]) for i in range(0, len(pool_rows), 32)])
        model.base = EmbeddingBase(bank, templates, cf.n_templates, cfg.memory.search, bank_owners,
                                   torch.from_numpy(owners[pool_rows]), cfg.memory.search_precision
                                   ).to(job.compute.device)
        if cf.cross_fit:
            exclude = owners.astype(np.int64)  # each training image: the bank and templates without it
    else:
        recon_rows = train_rows
        if cf.cross_fit and len(np.unique(owners)) >= 2:  # halves by image: one fits the base, one the filter
            first = set(rng.permutation(np.unique(owners))[: len(np.unique(owners)) // 2].tolist())
            recon_rows = np.flatnonzero([o in first for o in owners])
            train_rows = np.flatnonzero([o not in first for o in owners])
        with inputs.bar(total=cf.recon_steps, desc="reconstructor", unit="step") as bar:
            losses = fit_reconstruction_base(model, images[recon_rows], cfg, bar.update)
        reconstruction_loss = [losses[0], losses[-1]] if losses else []
    # The base map's scale is taken where the base has not seen the image: the held-out images,
    # or (too few images to hold any out) the fit images scored without their own patches.
    fit_index = {str(s.path): i for i, s in enumerate(job.samples)}
    val_owner = np.array([fit_index.get(str(p), -1) for p in job.validation], dtype=np.int64)
    with torch.inference_mode():
        init = torch.cat([model.base(model.features(val_images[i : i + 16]),
                                     torch.from_numpy(val_owner[i : i + 16]).to(job.compute.device)
                                     if cf.base == "memory" else None)[0]
                          for i in range(0, len(val_images), 16)])
    if cf.base == "reconstruction" and (val_owner >= 0).any():
        unseen = np.isin(val_owner, owners[train_rows]) if len(train_rows) < len(images) else val_owner >= 0
        init = init[torch.from_numpy(unseen).to(init.device)] if unseen.any() else init
    model.init_scale.fill_(max(float(init.median()), 1e-6))
    job.timings["base_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    hwc, val_hwc = to_hwc(images), to_hwc(val_images)
    with torch.inference_mode(), inputs.bar(total=cf.pool_size + cf.training.n_val, desc="synthetic samples",
                                            unit="sample") as bar:
        pool = build_pool(model, hwc[train_rows], row_classes[train_rows],
                          exclude[train_rows] if exclude is not None else None,
                          make_synthesizer(cfg.synthesis, hwc), cf.pool_size, cfg.seed, tick=bar.update)
        val_pool = build_pool(model, val_hwc, np.zeros(len(val_hwc), dtype=np.int64), None,
                              make_synthesizer(cfg.synthesis, hwc), cf.training.n_val, cfg.seed + 1,
                              tick=bar.update)
    job.timings["pool_s"] = time.perf_counter() - t1
    started = init_filter_from(model, cf.init_filter) if cf.init_filter else {}
    validation = Validation(model, val_pool, cf.max_blend)
    with inputs.loss_bar(cf.training.steps, "train filter") as tick:
        # a transferred filter is validated before the first step, so fine-tuning must beat it
        report = train_filter(model, pool, validation, job, progress=tick, validate_first=bool(started))
    report.started_from = started
    t2 = time.perf_counter()
    if cf.blend is None:
        with inputs.bar(total=BOOTSTRAP, desc="choose blend (bootstrap)", unit="draw") as bar:
            choice = validation.choose_blend(cfg.seed, tick=bar.update)
        report.chosen = {**report.chosen, **choice}
        model.blend.fill_(choice["blend"])
    else:
        model.blend.fill_(cf.blend)
        report.chosen = {"blend": cf.blend, "why": f"λ = {cf.blend:g}, set in the config"}
    job.timings["blend_s"] = time.perf_counter() - t2
    job.timings["train_s"] = report.seconds
    bank_rows = model.base.memory.bank.shape[0] if cf.base == "memory" else None
    return FitResult(bank_size=bank_rows, training=report, config=cfg if cfg is not given else None,
                     class_names=cats, reconstruction_loss=reconstruction_loss)


def train_filter(model: CostFilterModel, pool: Pool, validation: Validation, job: FitJob,
                 progress: Callable[[int, float], None] | None = None, validate_first: bool = False):
    """Train ``model.filter`` on batches drawn from ``pool``, keeping the weights that validate
    best (the best λ's AUPRO/P-AP on the validation pool). ``job.resume`` keeps the state."""
    cfg = job.config
    tr = cfg.costfilter.training
    opt = torch.optim.Adam(model.filter.parameters(), lr=tr.lr, betas=(0.9, 0.98))

    def step(k: int, rng: np.random.Generator) -> torch.Tensor:
        idx = rng.choice(len(pool), size=min(tr.batch_size, len(pool)), replace=len(pool) < tr.batch_size)
        volume, feats, init = pool.batch(idx)
        logits, cls = model.filter(volume, feats, init.unsqueeze(1))
        return filter_loss(logits, pool.masks[idx].float(), cls, pool.classes[idx] if cls is not None else None)["total"]

    return train(model, lambda k: k.startswith("filter."), step, validation, opt, tr, cfg.seed, plateau=True,
                 validate_first=validate_first, resume=job.resume,
                 fingerprint=config_fingerprint(cfg.to_dict(), "costfilter"), settings=cfg.to_dict(),
                 refingerprint=lambda saved: config_fingerprint(type(cfg).from_dict(saved).to_dict(), "costfilter"),
                 progress=progress, observer=job.observer,
                 compute=job.compute)


def teach_costfilter(job: FitJob) -> FitResult:
    """Confirmed-good images into a fitted CostFilter-AD over the memory base, with no training:
    their patches the base's bank does not cover yet are added (the continued k-centre coreset
    of the memory bank's teaching), and their feature maps join the templates the cost volume
    matches against; each is then scored without its own rows and template, for re-calibration."""
    from ...bank.memory_bank import MemoryBank
    from ...errors import CostfilterError
    from ...maps import typical_patch_score

    model, inputs = job.model, job.inputs
    base = model.base
    if not isinstance(base, EmbeddingBase):
        raise CostfilterError("a CostFilter-AD model over the reconstruction base has no bank to teach; refit it")
    images = torch.cat([b.images for b in inputs.batches([s.path for s in job.samples], "features")])
    mem = base.memory
    with torch.inference_mode():
        feats = model.features(images)
        start = mem(feats).flatten().square()
    b = len(feats)
    added, image = grow_bank(feats, mem.bank, start, job.config.seed)
    first = max([-1, *mem.owners.tolist(), *base.template_owners.tolist()]) + 1
    base.memory = MemoryBank(torch.cat([mem.bank, added]), mem.search, mem.chunk_bytes,
                             torch.cat([mem.owners, (first + image).to(mem.owners.dtype)]), mem.precision)
    base.templates = torch.cat([base.templates, feats.half()])
    dev = feats.device
    base.template_owners = torch.cat([base.template_owners, first + torch.arange(b, dtype=torch.int32, device=dev)])
    with torch.inference_mode():
        volume, f, init = model.inputs(images, first + torch.arange(b, device=dev))
        logits, _ = model.filter(volume, f, init.unsqueeze(1))
        maps, scores = model.scorer.finish(model.fuse(logits, init))
        maps, scores = maps.float().cpu(), scores.float().cpu()
    calibration = (scores.tolist(), [float(m.max()) for m in maps], [float(typical_patch_score(m[None])) for m in maps])
    return FitResult(calibration=calibration, bank_size=len(added))
