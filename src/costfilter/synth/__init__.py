"""Synthetic anomalies for training (no external data): Perlin masks filled from a texture source."""

from .anomalies import AnomalySynthesizer
from .perlin import perlin_mask, perlin_noise
from .textures import FolderTextures, ProceduralTextures

__all__ = ["AnomalySynthesizer", "FolderTextures", "ProceduralTextures", "perlin_mask", "perlin_noise"]
