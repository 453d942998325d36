"""What a method declares about itself: its model, how it is fitted, and what it can do."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..config import DetectorConfig
from ..training.job import FitStep


@dataclass(frozen=True)
class Method:
    """A registered method.

    ``build(config) → nn.Module`` gives the model (``forward((B, 3, S, S) images) →
    ((B, S, S) maps, (B,) scores)``); ``fit`` fits it (None: the method needs no fit, its batch
    is its reference set); ``exportable``: its model is a fixed function of one image, so it can
    be exported; ``trains``: it trains on synthetic anomalies and validates on a held-out part of
    the normal images (10 % by default), where the others calibrate leave-one-out; ``extend``:
    the continual-learning step (``fit --continue``), run on a fitted model with the new
    category's images as the job's samples.
    """

    name: str
    build: Callable[[DetectorConfig], nn.Module]
    fit: FitStep | None = None
    exportable: bool = True
    trains: bool = False
    #: adds a category to a fitted model, leaving the earlier ones in place (None: cannot)
    extend: FitStep | None = None
    #: appends confirmed-good images to a fitted model within its category, the job's samples
    #: being those images; its calibration is theirs, scored leave-one-out (None: cannot)
    teach: FitStep | None = None

    @property
    def needs_fit(self) -> bool:
        return self.fit is not None

    @property
    def default_holdout(self) -> float:
        """Share of the normal images held out of the fit when the config does not say."""
        return 0.1 if self.trains else 0.0
