"""Zero-shot batch mutual scoring (MuSc / FiSeCLIP): each image's patches scored against the
other images of its batch; no fit."""

from ..base import Method
from .model import ZeroShotModel

METHOD = Method("zeroshot", ZeroShotModel, fit=None, exportable=False)

__all__ = ["METHOD", "ZeroShotModel"]
