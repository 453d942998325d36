"""Methods compose the stages into one model. Add a method: a module here plus a registry line."""

from __future__ import annotations

from .memory import MemoryBankModel

#: method name → model class (a plain ``nn.Module`` mapping images to maps and scores).
METHODS = {"memory": MemoryBankModel}

__all__ = ["METHODS", "MemoryBankModel"]
