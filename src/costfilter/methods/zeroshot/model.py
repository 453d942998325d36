"""Zero-shot batch mutual scoring as MuSc: no normal training images; each image is scored
against the *other* images of its batch, most of which are normal (multi-degree aggregation,
per-layer scoring, RsCIN re-scoring). With a CLIP folder, FiSeCLIP's text filter keeps damaged-
looking patches out of the references and its text map joins the anomaly map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...config import DetectorConfig
from ...features import FeatureExtractor
from ...maps import MapScorer

#: Reference images compared with one query at a time: bounds the ``(hw, chunk, hw)`` distance
#: block (at 32×32 patches, 16 images are 64 MB in float32), so any pool size fits in memory.
REFERENCE_CHUNK = 16


def mutual_patch_scores(features: torch.Tensor, fraction: float, references: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, C, h, w)`` → ``(N, h, w)``.

    For every patch of image *i* and every other image *j*, the distance to *j*'s nearest patch;
    the patch score is the mean of the smallest ``fraction`` of those N − 1 distances (at least
    one). Anomalous references give large distances, which that robust mean leaves out.

    ``references``: optional ``(N, h, w)`` bool, the patches that may serve as references (the
    text filter's verdict). An image none of whose patches may serve drops out of the reference
    set; if that leaves an image with no reference at all, the filter is ignored for it.
    """
    n, c, h, w = features.shape
    if n < 2:
        raise ValueError("mutual scoring needs at least two images")
    hw = h * w
    q = features.permute(0, 2, 3, 1).reshape(n, hw, c).contiguous()
    sq = (q * q).sum(-1)  # (N, hw)
    allowed = None if references is None else references.reshape(n, hw)
    dev = features.device
    out = torch.empty(n, hw, device=dev)
    chunk = min(REFERENCE_CHUNK, n - 1)
    # One buffer for every distance block: a fresh 100 MB tensor per block costs more in page
    # faults than the matrix product itself.
    buffer = torch.empty(hw * chunk * hw, device=dev)
    for i in range(n):
        others = torch.cat([torch.arange(i, device=dev), torch.arange(i + 1, n, device=dev)])
        filtered = allowed is not None and bool(allowed[others].any())
        nearest = torch.empty(hw, n - 1, device=dev)
        for s in range(0, n - 1, chunk):
            idx = others[s : s + chunk]
            m = len(idx)
            # ‖a‖² − 2a·b + ‖b‖² per (query patch, reference patch); ‖a‖² is added after the min.
            d = torch.mm(q[i], q[idx].reshape(m * hw, c).T, out=buffer[: hw * m * hw].view(hw, m * hw))
            d.mul_(-2).add_(sq[idx].reshape(1, m * hw))
            if filtered:
                d.masked_fill_(~allowed[idx].reshape(1, m * hw), float("inf"))  # type: ignore[index]
            nearest[:, s : s + m] = d.view(hw, m, hw).amin(dim=2)
        nearest = nearest.add_(sq[i][:, None]).clamp_(min=0).sqrt_()  # (hw, N-1); inf: filtered out
        usable = int(allowed[others].any(dim=1).sum()) if filtered else n - 1  # type: ignore[index]
        keep = max(1, round(fraction * usable))
        out[i] = nearest.topk(keep, dim=1, largest=False).values.mean(dim=1)
    return out.view(n, h, w)


def rescore(scores: torch.Tensor, descriptors: torch.Tensor, ks: tuple[int, ...]) -> torch.Tensor:
    """MuSc's RsCIN: image scores ``(N,)`` smoothed over each image's most similar images.

    ``descriptors``: ``(N, D)`` global image features. For each k in ``ks`` an image's score
    becomes the similarity-weighted mean over its k most similar images (itself included, so
    k = 1 keeps it); the results are averaged over ``ks``. Images that look alike should score
    alike, which damps the noise of a single image's score. Weights are cosine similarities,
    clamped at zero. No normalisation of the scores: batches must stay comparable.
    """
    if not ks or len(scores) < 2:
        return scores
    d = F.normalize(descriptors.flatten(1).float(), dim=1)
    sim = (d @ d.T).clamp(min=0)
    sim.fill_diagonal_(1.0)
    out = []
    for k in ks:
        top = sim.topk(min(k, len(scores)), dim=1)
        weights = torch.zeros_like(sim).scatter_(1, top.indices, top.values)
        out.append((weights / weights.sum(1, keepdim=True)) @ scores.float())
    return torch.stack(out).mean(0)


class ZeroShotModel(nn.Module):
    """``forward((B, 3, S, S) images) → ((B, S, S) maps, (B,) scores)``, B ≥ 2: the batch is
    its own reference set, so an image's result depends on the others in its batch.

    As MuSc: patches aggregated over several neighbourhood sizes (``degrees``), each tapped layer
    scored on its own (LayerNorm'd, so layers share a scale) and the scores averaged, the image
    score the map's maximum, re-scored over similar images of the batch (``rescore_k``). Unlike
    MuSc's ViT, a CNN's layers have different grids; each is scored on its own (``native_grid``).
    """

    def __init__(self, config: DetectorConfig, features: FeatureExtractor | None = None):
        super().__init__()
        z = config.zeroshot
        self.features = features or FeatureExtractor(config.features)
        self.fraction = z.fraction
        self.degrees, self.per_layer, self.rescore_k = tuple(z.degrees), z.per_layer, tuple(z.rescore_k)
        self.native_grid = z.native_grid
        # top_percent 0 keeps the single largest pixel: the map's maximum
        top = config.scoring.top_percent if z.image_score == "top_percent" else 0.0
        self.scorer = MapScorer(config.features.image_size, config.scoring.sigma, top)
        self.text_filter: nn.Module | None = None
        if z.clip_model:
            from .clip_text import ClipPatchText

            self.text_filter = ClipPatchText(z.clip_model, z.clip_object, z.clip_local_correlation)
        self.clip_threshold, self.clip_map_weight = z.clip_threshold, z.clip_map_weight

    def damaged(self, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor | None:
        """``(B, h, w)``: CLIP's probability that each patch looks damaged (None: no CLIP)."""
        if self.text_filter is None:
            return None
        p = self.text_filter(images).unsqueeze(1)
        return F.interpolate(p, size=grid, mode="bilinear", align_corners=False).squeeze(1)

    def fuse(self, visual: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        """``(B, h, w)`` mutual scores blended with CLIP's text map (FiSeCLIP's fused map): each
        divided by its batch median so neither's units dominate; unchanged without CLIP."""
        w = self.clip_map_weight
        if text is None or w == 0:
            return visual
        return (1 - w) * visual / visual.median().clamp_min(1e-12) + w * text / text.median().clamp_min(1e-12)

    def patch_scores(self, layers: list[torch.Tensor], refs: torch.Tensor | None) -> torch.Tensor:
        """Per-layer ``(B, C_l, h_l, w_l)`` maps → ``(B, h, w)`` mutual scores averaged over
        degrees (and layers, when scored one by one). ``refs``: ``(B, h, w)`` or None."""
        g = self.features.grid
        if not self.per_layer:
            return torch.stack([mutual_patch_scores(torch.cat([self.features.aggregate(m, r) for m in layers], 1),
                                                    self.fraction, refs) for r in self.degrees]).mean(0)
        scores = []
        for m in (F.layer_norm(m, m.shape[1:]) for m in layers):
            # A coarser layer is scored on its own grid and its scores upsampled: at stride 16 that
            # is 16× fewer patch pairs than scoring it resampled to the stride-8 grid.
            own = self.native_grid and m.shape[-1] != g
            layer_refs = refs
            if own and refs is not None:
                layer_refs = F.interpolate(refs[:, None].float(), size=m.shape[-2:], mode="nearest")[:, 0] > 0.5
            for r in self.degrees:
                s = mutual_patch_scores(self.features.aggregate(m, r, resample=not own), self.fraction, layer_refs)
                if own:
                    s = F.interpolate(s[:, None], size=(g, g), mode="bilinear", align_corners=False)[:, 0]
                scores.append(s)
        return torch.stack(scores).mean(0)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        layers = self.features.layer_maps(images)
        grid = self.features.grid
        text = self.damaged(images, (grid, grid))
        refs = None if text is None else text <= self.clip_threshold
        maps, scores = self.scorer(self.fuse(self.patch_scores(layers, refs), text))
        return maps, rescore(scores, layers[-1].mean(dim=(2, 3)), self.rescore_k)


def robust_outlier_threshold(scores: torch.Tensor, k: float) -> float:
    """``median + k · 1.4826 · MAD`` of a batch's scores: the zero-shot decision rule (no normal
    images exist to calibrate on, so an image is rejected when it stands out from its batch)."""
    med = scores.median()
    mad = (scores - med).abs().median() * 1.4826
    return float(med + k * mad)


#: no fit: each batch is its own reference set; no fixed graph to export
