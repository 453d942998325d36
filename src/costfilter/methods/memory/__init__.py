"""The memory bank (PatchCore-style): features → nearest-neighbour distances to a coreset of the
normal patches → map and score. Appends categories without forgetting."""

from ..base import Method
from .fit import continue_memory, fit_memory, teach_memory
from .model import MemoryBankModel

METHOD = Method("memory", MemoryBankModel, fit=fit_memory, extend=continue_memory, teach=teach_memory)

__all__ = ["METHOD", "MemoryBankModel"]
