"""Segmentation losses for the filtering network (probabilities vs synthetic masks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...compute import float32
from ...maps import gaussian_kernel1d


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Mean focal loss of 2-class ``(B, 2, H, W)`` logits vs ``(B, H, W)`` {0, 1} targets with a
    per-sample focusing ``gamma`` ``(B,)``."""
    logp = F.log_softmax(logits, dim=1).gather(1, target.long().unsqueeze(1)).squeeze(1)
    weight = (1 - logp.exp()).clamp(min=0) ** gamma.view(-1, 1, 1)
    return -(weight * logp).mean()


def ssim_loss(pred: torch.Tensor, target: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """``1 − SSIM`` of ``(B, H, W)`` maps in [0, 1] with a Gaussian window."""
    k = gaussian_kernel1d(sigma, pred.device).to(pred)
    r = k.numel() // 2
    win = (k[:, None] * k[None, :]).view(1, 1, 2 * r + 1, 2 * r + 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x.unsqueeze(1), (r, r, r, r), mode="reflect"), win).squeeze(1)

    mu_x, mu_y = blur(pred), blur(target)
    sxx = blur(pred * pred) - mu_x**2
    syy = blur(target * target) - mu_y**2
    sxy = blur(pred * target) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return 1 - ssim.mean()


def soft_iou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``1 − soft IoU`` per sample, averaged; ``eps`` keeps all-normal samples defined."""
    inter = (pred * target).flatten(1).sum(1)
    union = (pred + target - pred * target).flatten(1).sum(1)
    return (1 - (inter + eps) / (union + eps)).mean()


def filter_loss(logits: torch.Tensor, masks: torch.Tensor, class_logits: torch.Tensor | None = None,
                classes: torch.Tensor | None = None, gamma: float = 2.0, gamma_boost: float = 2.0) -> dict[str, torch.Tensor]:
    """The method's objective: focal (dynamic γ) + 0.1 SSIM + 1.0 L2 + 0.1 soft IoU, + 0.5 CE of
    the class head. ``logits`` are upsampled to the masks' ``(B, H, W)`` size first. γ is raised by
    ``gamma_boost`` for samples whose class the adaptor gets wrong (hard classes weigh more).

    Computed in float32 whatever the autocast around it: SSIM's variances are differences of
    near-equal means, which bfloat16's 8-bit mantissa turns into NaN."""
    with float32(logits):
        return _filter_loss(logits.float(), masks.float(), None if class_logits is None else class_logits.float(),
                            classes, gamma, gamma_boost)


def _filter_loss(logits: torch.Tensor, masks: torch.Tensor, class_logits: torch.Tensor | None,
                 classes: torch.Tensor | None, gamma: float, gamma_boost: float) -> dict[str, torch.Tensor]:
    logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    prob = logits.softmax(1)[:, 1]
    g = torch.full((logits.shape[0],), gamma, device=logits.device)
    parts = {}
    if class_logits is not None and classes is not None:
        parts["ce"] = 0.5 * F.cross_entropy(class_logits, classes)
        g = g + gamma_boost * (class_logits.argmax(1) != classes).float()
    parts["focal"] = focal_loss(logits, masks, g)
    parts["ssim"] = 0.1 * ssim_loss(prob, masks)
    parts["l2"] = F.mse_loss(prob, masks)
    parts["iou"] = 0.1 * soft_iou_loss(prob, masks)
    parts["total"] = sum(parts.values())
    return parts
