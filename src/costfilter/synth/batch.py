"""Synthetic anomalies in batches, for training and validating the trained methods."""

from __future__ import annotations

import numpy as np
import torch

from ..config import SynthesisConfig
from .anomalies import AnomalySynthesizer
from .textures import FolderTextures, ProceduralTextures


def make_synthesizer(config: SynthesisConfig, normals: np.ndarray, normal_fraction: float = 0.5) -> AnomalySynthesizer:
    """The configured synthesizer: texture source (a folder, or offline procedural textures plus
    other normal images, from the first 64 of ``normals`` ``(N, S, S, 3)``), self-fill share,
    photometric fill augmentation, foreground restriction."""
    textures = FolderTextures(config.texture_dir) if config.texture_dir else ProceduralTextures(list(normals[:64]))
    return AnomalySynthesizer(textures, foreground_threshold=config.foreground_threshold, normal_fraction=normal_fraction,
                              self_fill=config.self_fill, photometric=config.photometric)


def synth_batch(synth: AnomalySynthesizer, images: np.ndarray, idx: np.ndarray, rng: np.random.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic anomalies on ``images[idx]``: ``(B, 3, S, S)`` uint8 and ``(B, S, S)`` float masks."""
    pairs = [synth(rng, images[i]) for i in idx]
    imgs = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(np.stack([p[1] for p in pairs])).float()
    return imgs, masks
