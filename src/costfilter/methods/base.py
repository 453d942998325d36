"""What a method declares about itself: its model, how it is fitted, and what it can do."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ..config import DetectorConfig

if TYPE_CHECKING:
    from ..data import Sample
    from ..inputs import Inputs
    from ..training.report import TrainReport


@dataclass
class FitJob:
    """Everything a fit step gets: the freshly built ``model``, the ``config``, the normal fit
    ``samples``, the ``validation`` images (held out of the fit, or the fit images themselves
    when too few were given to hold any out), the input pipeline, whether to score every fit
    image ``leave_one_out`` for calibration, a ``timings`` dict to fill, a ``resume`` file and an
    ``observer`` of the training."""

    model: nn.Module
    config: DetectorConfig
    samples: list[Sample]
    validation: list[Path]
    inputs: Inputs
    leave_one_out: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    resume: Path | None = None
    #: called as ``observer(step, model)`` after each validation of a training (learning curves)
    observer: Callable[[int, nn.Module], None] | None = None


@dataclass
class FitResult:
    """What a fit step reports back.

    ``calibration``: scores, map peaks and typical-patch scores of every fit image scored
    leave-one-out, when the method can (the thresholds then come from them). ``config``: the
    config as the data settled it (e.g. the number of classes of the class-aware adaptor), when
    it differs from the one given. ``state``: facts to keep in the checkpoint (see
    :class:`~costfilter.state.DetectorState`).
    """

    calibration: tuple[list[float], list[float], list[float]] | None = None
    bank_size: int | None = None
    training: TrainReport | None = None
    config: DetectorConfig | None = None
    state: dict[str, Any] = field(default_factory=dict)


FitStep = Callable[[FitJob], FitResult]


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

    @property
    def needs_fit(self) -> bool:
        return self.fit is not None

    @property
    def default_holdout(self) -> float:
        """Share of the normal images held out of the fit when the config does not say."""
        return 0.1 if self.trains else 0.0
