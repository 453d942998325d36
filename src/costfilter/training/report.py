"""What a training run did (steps, time, losses, validation, the chosen weights): plain data,
saved inside the checkpoint's state."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainReport:
    """``validation``: one dict per validation (``step``, ``score`` and the method's own figures);
    ``best_step``: the step whose weights were kept; ``chosen``: what validation chose besides the
    weights (e.g. CostFilter-AD's blend λ); ``started_from``: the checkpoint whose weights the
    training started from (transfer), empty when it started from scratch."""

    steps: int = 0
    seconds: float = 0.0
    stopped_by: str = "steps"
    losses: list[float] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    best_step: int = 0
    resumed_from: int = 0
    chosen: dict[str, Any] = field(default_factory=dict)
    started_from: dict[str, Any] = field(default_factory=dict)

    def best(self) -> dict[str, Any]:
        """The validation record of the kept weights (empty if none)."""
        return next((v for v in self.validation if v["step"] == self.best_step), {})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainReport:
        """From a saved dict; earlier files kept CostFilter-AD's ``blend`` and DFM's
        ``temperature`` at the top level."""
        data = dict(data)
        chosen = dict(data.pop("chosen", {}))
        for key in ("blend", "temperature"):
            if key in data:
                chosen.setdefault(key, data.pop(key))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names}, chosen=chosen)
