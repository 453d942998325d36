"""A whole method in one module, as a user would add one (``test_registries.py`` registers it
with one line): distance of each patch to the mean normal patch."""

from __future__ import annotations

import torch
from torch import nn

from costfilter.config import DetectorConfig
from costfilter.features import FeatureExtractor
from costfilter.maps import MapScorer
from costfilter.methods.base import Method
from costfilter.training.job import FitJob, FitResult


class CentroidModel(nn.Module):
    """``forward((B, 3, S, S)) → ((B, S, S) maps, (B,) scores)``: distance to the mean normal patch."""

    def __init__(self, config: DetectorConfig):
        super().__init__()
        self.features = FeatureExtractor(config.features)
        self.register_buffer("centre", torch.zeros(self.features.channels))
        self.scorer = MapScorer(config.features.image_size, config.scoring.sigma, config.scoring.top_percent)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(images)
        return self.scorer((feats - self.centre[None, :, None, None]).norm(dim=1))


def fit_centroid(job: FitJob) -> FitResult:
    feats = torch.cat(list(job.inputs.features(job.model.features, [s.path for s in job.samples], "features")))
    job.model.centre = feats.mean(dim=(0, 2, 3))
    return FitResult()


METHOD = Method("centroid", CentroidModel, fit=fit_centroid)
