"""Training DFM end to end: adapter, temperature and a score-to-logit map (and, with
``dfm.train_backbone``, the tapped backbone stages), on synthetic anomalies of normal images; the
weights are selected on held-out normal images with synthetic anomalies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import CostfilterError
from ...inputs import to_hwc
from ...metrics import auroc, average_precision, binary_curve
from ...synth.batch import make_synthesizer, synth_batch
from ...training.bank import build_bank
from ...training.job import FitJob, FitResult
from ...training.loop import config_fingerprint, train
from ...training.report import TrainReport
from .model import DFMModel


def embed_bank(model: DFMModel, images: torch.Tensor, ids: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """The bank rows again, from the current features: row ``k`` is patch ``ids[k]``
    (``image · h · w + y · w + x``) of the decoded fit ``images`` ``(N, 3, S, S)``."""
    per_image = model.features.grid ** 2
    order = ids.argsort()
    sorted_ids = ids[order]
    rows = torch.empty(len(ids), model.bank.shape[1], device=model.bank.device)
    with torch.no_grad():
        for i in range(0, len(images), batch):
            bounds = torch.tensor([i * per_image, (i + batch) * per_image], device=sorted_ids.device)
            lo, hi = torch.searchsorted(sorted_ids, bounds).tolist()
            if lo == hi:
                continue
            feats = model.features(images[i : i + batch])
            flat = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
            rows[order[lo:hi]] = flat[sorted_ids[lo:hi] - i * per_image]
    return rows


def _validation(model: DFMModel, images: torch.Tensor, masks: torch.Tensor,
                before: Callable[[], None] | None = None, category: int | None = None) -> Callable[[], dict[str, Any]]:
    labels = (masks.flatten(1).amax(1) > 0).numpy()

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if category is None:
            return model(x)
        return model.routed(x, torch.full((len(x),), category, device=model.bank.device))[:2]

    def validate() -> dict[str, Any]:
        if before is not None:
            before()
        model.eval()
        with torch.no_grad():
            maps, scores = zip(*(run(images[i : i + 16]) for i in range(0, len(images), 16)))
        maps, scores = torch.cat(maps).float().cpu(), torch.cat(scores).float().cpu()
        i_auroc = auroc(binary_curve(scores.numpy(), labels))
        p_ap = average_precision(binary_curve(maps.numpy().ravel(), masks.numpy().ravel() > 0))
        return {"image_auroc": i_auroc, "pixel_ap": p_ap, "score": (i_auroc + p_ap) / 2,
                "chosen": {"temperature": model.log_tau.exp().item()}}

    return validate


def keep_replay(model: DFMModel, decoded: torch.Tensor, category: int, budget: int, seed: int) -> None:
    """Keep ``budget`` seeded fit images ``(N, 3, S, S)`` uint8 of ``category`` in the model,
    for continual learning to replay later."""
    if budget <= 0:
        return
    pick = np.sort(np.random.default_rng([seed, 7, category]).permutation(len(decoded))[:budget])
    dev = model.replay.device
    model.replay = torch.cat([model.replay, decoded[torch.from_numpy(pick)].to(dev)])
    model.replay_category = torch.cat([model.replay_category, torch.full((len(pick),), category, device=dev)])


def fit_dfm(job: FitJob) -> FitResult:
    """DFM's fit step: the bank as for the memory bank, then adapter + temperature trained end to
    end; step 0 (plain matching) is validated too, so training has to beat it."""
    model = job.model
    decoded = job.inputs.load([s.path for s in job.samples], "load fit images")[0]
    built = build_bank(model.features, decoded, job)
    model.set_bank(built.bank)
    keep_replay(model, decoded, 0, job.config.dfm.replay_images, job.config.seed)
    e2e = bool(model.backbone_params)

    def rebank() -> None:  # the bank follows the features: embedded again before each validation
        model.set_bank(embed_bank(model, decoded, built.ids))

    report = _train(job, to_hwc(decoded), None, rebank if e2e else None)
    return FitResult(bank_size=len(model.bank), training=report)


def continue_dfm(job: FitJob) -> FitResult:
    """Continual learning: a new category's bank rows appended after the old ones, then adapter
    and temperature fine-tuned on its images, with ``dfm.replay_share`` of each batch drawn from
    the stored images of the earlier categories (``model.replay``; none: plain fine-tuning)."""
    model, cfg = job.model, job.config
    if model.backbone_params:
        raise CostfilterError("a DFM whose backbone trains cannot keep earlier categories' banks in step; "
                              "fit all categories together instead")
    decoded = job.inputs.load([s.path for s in job.samples], "load fit images")[0]
    built = build_bank(model.features, decoded, job)
    before = len(model.bank)
    model.set_bank(torch.cat([model.bank, built.bank]))
    new = model.router.add(before, len(model.bank))
    replay = model.replay if cfg.dfm.replay_share > 0 else model.replay[:0]
    images = np.concatenate([to_hwc(decoded), to_hwc(replay.cpu())])
    categories = np.concatenate([np.full(len(decoded), new), model.replay_category[: len(replay)].cpu().numpy()])
    report = _train(job, images, categories, None, new)
    keep_replay(model, decoded, new, cfg.dfm.replay_images, cfg.seed)
    return FitResult(bank_size=len(built.bank), training=report)


def _train(job: FitJob, images: np.ndarray, categories: np.ndarray | None, rebank: Callable[[], None] | None,
           new: int | None = None) -> TrainReport:
    """Train adapter, temperature and logit map (and a trained backbone) on synthetic anomalies
    of ``images`` ``(N, S, S, 3)``; validated on the job's held-out images. Continual learning
    passes each image's ``categories`` ``(N,)`` (rows of the ``new`` one, then replayed ones)."""
    cfg, model, inputs = job.config, job.model, job.inputs
    tr = cfg.dfm.training
    e2e = bool(model.backbone_params)
    n_new = len(images) if categories is None else int((categories == new).sum())
    val_images = to_hwc(inputs.load(job.validation, "load held-out images")[0])
    synth = make_synthesizer(cfg.synthesis, images[:n_new])
    val_x, val_m = synth_batch(synth, val_images, np.resize(np.arange(len(val_images)), tr.n_val),
                               np.random.default_rng([cfg.seed, 10**6]))
    params = [p for n, p in model.named_parameters() if not n.startswith("features.")]
    groups = [{"params": params, "lr": tr.lr}]
    if e2e:
        groups.append({"params": model.backbone_params, "lr": tr.lr * cfg.dfm.backbone_lr})
    trained = model.trained_feature_keys
    grid = model.features.grid
    n_replay = len(images) - n_new

    def step(k: int, rng: np.random.Generator) -> torch.Tensor:
        idx = rng.choice(n_new, size=min(tr.batch_size, n_new), replace=n_new < tr.batch_size)
        if n_replay:  # a share of the batch from earlier categories' stored images
            swap = rng.random(len(idx)) < cfg.dfm.replay_share
            idx[swap] = n_new + rng.choice(n_replay, size=int(swap.sum()))
        x, m = synth_batch(synth, images, idx, rng)
        with torch.set_grad_enabled(e2e):
            feats = model.features(x)
        m = m.to(feats.device)
        target = F.adaptive_avg_pool2d(m.unsqueeze(1), grid).squeeze(1)  # anomalous fraction per patch
        cat = None if categories is None else torch.from_numpy(categories[idx]).long().to(feats.device)
        logits = F.softplus(model.scale) * (model.patch_scores(feats, cat) - model.shift)
        return F.binary_cross_entropy_with_logits(logits, target)

    def keep(k: str) -> bool:  # what training keeps of its best step
        # A trained backbone keeps its weights and the bank embedded with them.
        return (not k.startswith("features.") and (e2e or k != "bank")) or k in trained

    with inputs.loss_bar(tr.steps, "train dfm") as tick:
        report = train(model, keep, step, _validation(model, val_x, val_m, rebank, new),
                       torch.optim.Adam(groups), tr, cfg.seed,
                       validate_first=True, resume=job.resume, fingerprint=config_fingerprint(cfg.to_dict(), "dfm"),
                       progress=tick, compute=job.compute)
    report.chosen["temperature"] = model.log_tau.exp().item()
    job.timings["train_s"] = report.seconds
    return report


def teach_dfm(job: FitJob) -> FitResult:
    """Confirmed-good images into a fitted DFM's bank, with no training: the k-centre coreset
    continued from the bank in the backbone's space (as the memory bank's teaching does), then
    each new image scored against the grown bank without its own rows, for re-calibration."""
    from ...bank.knn import nearest
    from ...maps import typical_patch_score
    from ...training.bank import grow_bank

    model, inputs = job.model, job.inputs
    paths = [s.path for s in job.samples]
    with torch.inference_mode():
        feats = torch.cat([model.features(b.images) for b in inputs.batches(paths, "features")])
        b, c = feats.shape[:2]
        start = nearest(feats.permute(0, 2, 3, 1).reshape(-1, c), model.bank)[0].square()
        added, owner = grow_bank(feats, model.bank, start, job.config.seed)
        scores, peaks, typical = [], [], []
        for i in range(b):  # each against the bank without its own new rows: a holdout's honesty
            m, s = model.scorer(model._match(feats[i : i + 1], torch.cat([model.bank, added[owner != i]])))
            scores.append(float(s[0]))
            peaks.append(float(m[0].max()))
            typical.append(float(typical_patch_score(m)))
        model.set_bank(torch.cat([model.bank, added]))
    return FitResult(calibration=(scores, peaks, typical), bank_size=len(added))
