"""Methods compose the stages into one detector. Add a method: a folder ``methods/<name>/`` whose
``__init__`` defines ``METHOD`` (:class:`~costfilter.methods.base.Method`: its model from
``model.py``, its fit step from ``fit.py`` and its capabilities), plus one line in :data:`REGISTRY`.

The registry holds import paths, not classes, so listing the names loads no torch (the CLI's
choices come from it) and a method's module is imported when it is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Method

#: method name → ``"module:attribute"`` of its :class:`~costfilter.methods.base.Method`
REGISTRY: dict[str, str] = {
    "memory": "costfilter.methods.memory:METHOD",
    "costfilter": "costfilter.methods.costfilter:METHOD",
    "dfm": "costfilter.methods.dfm:METHOD",
    "zeroshot": "costfilter.methods.zeroshot:METHOD",
}


def get_method(name: str) -> Method:
    """The registered method called ``name``; an unknown name is a one-line error."""
    from ..errors import CostfilterError

    if name not in REGISTRY:
        raise CostfilterError(f"unknown method {name!r}; choose one of {', '.join(REGISTRY)}")
    module, _, attr = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)


__all__ = ["REGISTRY", "get_method"]
