"""DFM: differentiable matching against a normal bank, with a feature adapter trained end to end
on synthetic anomalies; continual learning replays stored images of earlier categories."""

from ..base import Method
from .fit import continue_dfm, fit_dfm, teach_dfm
from .model import DFMModel

METHOD = Method("dfm", DFMModel, fit=fit_dfm, trains=True, extend=continue_dfm, teach=teach_dfm)

__all__ = ["METHOD", "DFMModel"]
