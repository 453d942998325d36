"""Presets: named sets of config values that put a method where its paper put it. A preset is
applied before any option given on the command line (an explicit option wins), written into the
checkpoint's config (``preset``) and shown by ``costfilter info``; docs/presets.md lists each
value beside the paper's and says where ours differs.

A preset names the backbone the paper used but cannot supply it: nothing is downloaded here, so
the user gives the local folder (``--backbone hf:FOLDER``), and a preset that needs one refuses
to run on another backbone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .config import DetectorConfig
from .errors import CostfilterError


@dataclass(frozen=True)
class Preset:
    """``values``: dotted config paths → value; ``backbone``: what ``--backbone`` must name (the
    paper's encoder), None when any backbone does."""

    method: str
    name: str
    values: dict[str, Any] = field(default_factory=dict)
    backbone: str | None = None


PRESETS: dict[tuple[str, str], Preset] = {
    # CostFilter-AD (ICML 2025) over an embedding base: DINOv2-reg ViT-B/14 at 392 px (28 × 28
    # tokens), blocks 3–10 fused into two groups of four, the 768 smallest of 784 costs kept in
    # template order, b = 48, Adam 1e-4 with batch 12 for about 5,000 steps.
    ("costfilter", "reference"): Preset("costfilter", "reference", {
        "features.image_size": 392, "features.layers": (3, 4, 5, 6, 7, 8, 9, 10), "features.layer_groups": 2,
        "costfilter.base": "memory", "costfilter.n_templates": 1, "costfilter.volume": "template",
        "costfilter.top_k": 768, "costfilter.widths": (48, 96, 96, 192),
        "costfilter.training.batch_size": 12, "costfilter.training.lr": 1e-4, "costfilter.training.steps": 5000,
    }, backbone="a DINOv2-with-registers ViT-B/14 folder (hf:FOLDER)"),
    # MuSc (ICLR 2024) as our zero-shot follows it: CLIP ViT-L/14-336 image tower at 518 px
    # (37 × 37 tokens), blocks 6, 12, 18 and 24 each scored alone, aggregation degrees 1, 3, 5.
    ("zeroshot", "reference"): Preset("zeroshot", "reference", {
        "features.image_size": 518, "features.layers": (6, 12, 18, 24), "features.layer_groups": 0,
        "zeroshot.degrees": (1, 3, 5), "zeroshot.per_layer": True,
    }, backbone="a CLIP ViT-L/14-336 folder (hf:FOLDER)"),
}


def preset_names(method: str) -> list[str]:
    return [name for (m, name) in PRESETS if m == method]


def apply_preset(cfg: DetectorConfig, name: str) -> None:
    """Set ``cfg``'s values to preset ``name`` of its method and record the name; an unknown
    preset is a one-line error naming those there are."""
    preset = PRESETS.get((cfg.method, name))
    if preset is None:
        known = preset_names(cfg.method)
        raise CostfilterError(f"no preset {name!r} for method {cfg.method!r}"
                              + (f" (presets: {', '.join(known)})" if known else " (it has none)"))
    for path, value in preset.values.items():
        *parents, attr = path.split(".")
        obj: Any = cfg
        for p in parents:
            obj = getattr(obj, p)
        if not dataclasses.is_dataclass(obj) or attr not in {f.name for f in dataclasses.fields(obj)}:
            raise AssertionError(f"preset {name}: {path} is not a config option")
        setattr(obj, attr, value)
    cfg.preset = name


def check_preset(cfg: DetectorConfig) -> None:
    """A preset that needs the paper's backbone refuses another one (after the options are set)."""
    preset = PRESETS.get((cfg.method, cfg.preset or ""))
    if preset is not None and preset.backbone and not cfg.features.backbone.startswith("hf:"):
        raise CostfilterError(f"--preset {preset.name} is set for {preset.backbone}; give it with --backbone "
                              f"hf:FOLDER (got {cfg.features.backbone})")
