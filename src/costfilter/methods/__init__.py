"""Methods compose the stages into one model. Add a method: a module here plus a registry line."""

from __future__ import annotations

from .costfilter import CostFilterModel
from .dfm import DFMModel
from .memory import MemoryBankModel
from .zeroshot import ZeroShotModel

#: method name → model class (a plain ``nn.Module`` mapping images to maps and scores).
METHODS = {"memory": MemoryBankModel, "costfilter": CostFilterModel, "dfm": DFMModel, "zeroshot": ZeroShotModel}

#: methods that need no fit (their batches are their references)
NO_FIT = {"zeroshot"}

__all__ = ["METHODS", "NO_FIT", "CostFilterModel", "DFMModel", "MemoryBankModel", "ZeroShotModel"]
