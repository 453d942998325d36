"""What a fit step gets and gives back: the job types every method's fit step shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from ..compute import CPU, Compute
from ..config import DetectorConfig

if TYPE_CHECKING:
    from ..data import Sample
    from ..inputs import Inputs
    from .report import TrainReport


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
    #: the device the model is on and the precision its networks train and run at
    compute: Compute = CPU


@dataclass
class FitResult:
    """What a fit step reports back.

    ``calibration``: scores, map peaks and typical-patch scores of every fit image scored
    leave-one-out, when the method can (the thresholds then come from them). ``config``: the
    config as the data settled it (e.g. the number of classes of the class-aware adaptor), when
    it differs from the one given. ``class_names`` (the class-aware adaptor's categories) and
    ``reconstruction_loss`` (first and last, reconstruction base) are kept in the checkpoint's
    :class:`~costfilter.state.DetectorState`.
    """

    calibration: tuple[list[float], list[float], list[float]] | None = None
    bank_size: int | None = None
    training: TrainReport | None = None
    config: DetectorConfig | None = None
    class_names: list[str] = field(default_factory=list)
    reconstruction_loss: list[float] = field(default_factory=list)


FitStep = Callable[[FitJob], FitResult]
