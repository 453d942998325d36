"""What a config may hold and how a saved one is read: value checks, type checks of every
option against its annotation, and the values that reproduce models saved before an option
existed or moved. Works on the config dataclasses without importing them (``config`` imports this)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import TYPE_CHECKING, Any

from .errors import CostfilterError

if TYPE_CHECKING:
    from .config import DetectorConfig


def check_config(cfg: DetectorConfig) -> None:
    """Raise :class:`CostfilterError` for values that cannot work."""
    f, m, s, c = cfg.features, cfg.memory, cfg.scoring, cfg.calibration
    if cfg.batch_size < 1:
        raise CostfilterError(f"batch_size must be ≥ 1, got {cfg.batch_size}")
    if cfg.shots is not None and cfg.shots < 2:
        raise CostfilterError(f"shots must be ≥ 2, got {cfg.shots}: with one image none can be scored as unseen, "
                              "so no threshold can be set")
    if f.backbone.startswith("hf:"):  # a ViT: a multiple of its patch size, which its folder says
        if f.image_size <= 0:
            raise CostfilterError(f"image_size must be positive, got {f.image_size}")
    elif f.image_size <= 0 or f.image_size % 32:
        raise CostfilterError(f"image_size must be a positive multiple of 32, got {f.image_size}")
    if f.layer_groups < 0 or (f.layer_groups and not f.backbone.startswith("hf:")):
        raise CostfilterError("layer_groups (≥ 1) averages groups of a ViT's blocks: it needs an hf: backbone")
    if m.coreset_ratio is not None and not 0 < m.coreset_ratio <= 1:
        raise CostfilterError(f"coreset_ratio must be in (0, 1], got {m.coreset_ratio}")
    if m.bank_size < 1:
        raise CostfilterError(f"bank_size must be ≥ 1, got {m.bank_size}")
    if m.search_precision not in ("auto", "float32", "bfloat16"):
        raise CostfilterError(f"search_precision must be 'auto', 'float32' or 'bfloat16', got {m.search_precision!r}")
    if s.image_score not in ("top_percent", "reweighted_max"):
        raise CostfilterError(f"image_score must be 'top_percent' or 'reweighted_max', got {s.image_score!r}")
    if s.image_score == "reweighted_max" and cfg.method != "memory":
        raise CostfilterError("image_score 'reweighted_max' is the memory bank's (method: memory)")
    if s.reweight_neighbours < 1:
        raise CostfilterError(f"reweight_neighbours must be ≥ 1, got {s.reweight_neighbours}")
    if m.sampler not in ("greedy", "random"):
        raise CostfilterError(f"sampler must be 'greedy' or 'random', got {m.sampler!r}")
    if m.search not in ("torch", "faiss"):
        raise CostfilterError(f"search must be 'torch' or 'faiss', got {m.search!r}")
    if not 0 < s.top_percent <= 100:
        raise CostfilterError(f"top_percent must be in (0, 100], got {s.top_percent}")
    if c.holdout_fraction is not None and not 0 <= c.holdout_fraction < 1:
        raise CostfilterError(f"holdout_fraction must be in [0, 1), got {c.holdout_fraction}")
    for name in ("false_reject_rate", "pixel_false_alarm_rate"):
        if not 0 < getattr(c, name) < 1:
            raise CostfilterError(f"{name} must be in (0, 1), got {getattr(c, name)}")
    if cfg.dfm.replay_images < 0 or not 0 <= cfg.dfm.replay_share < 1:
        raise CostfilterError("dfm.replay_images must be ≥ 0 and dfm.replay_share in [0, 1)")
    z = cfg.zeroshot
    if not 0 < z.fraction <= 1 or z.batch_size < 2:
        raise CostfilterError("zeroshot.fraction must be in (0, 1] and zeroshot.batch_size ≥ 2")
    if not z.degrees or any(r < 1 or r % 2 == 0 for r in z.degrees) or any(k < 1 for k in z.rescore_k):
        raise CostfilterError("zeroshot.degrees must be odd sizes ≥ 1, zeroshot.rescore_k sizes ≥ 1")
    if not 0 <= z.clip_map_weight <= 1:
        raise CostfilterError(f"zeroshot.clip_map_weight must be in [0, 1], got {z.clip_map_weight}")
    if z.image_score not in ("max", "top_percent"):
        raise CostfilterError(f"zeroshot.image_score must be max or top_percent, got {z.image_score!r}")
    cf = cfg.costfilter
    if cf.base not in ("memory", "reconstruction"):
        raise CostfilterError(f"costfilter.base must be 'memory' or 'reconstruction', got {cf.base!r}")
    if cf.blend is not None and not 0 <= cf.blend <= 1:
        raise CostfilterError(f"costfilter.blend must be in [0, 1], got {cf.blend}")
    if cf.volume not in ("template", "sorted") or cf.blend_on not in ("filter", "base"):
        raise CostfilterError("costfilter.volume must be 'template' or 'sorted', costfilter.blend_on 'filter' or 'base'")
    if cf.top_k < 1 or cf.n_templates < 1 or not cf.widths:
        raise CostfilterError("costfilter.top_k and n_templates must be ≥ 1 and widths non-empty")
    t = cfg.tiling
    if t.size < 0 or (t.size and not 0 <= t.overlap < t.size) or (not t.size and t.overlap):
        raise CostfilterError(f"tiling needs size > overlap ≥ 0 (size 0 = off), got size {t.size}, overlap {t.overlap}")
    if t.size and cfg.method == "zeroshot":
        raise CostfilterError("tiling is not available for zero-shot scoring (its batch is its reference set)")
    sc = cfg.screening.contamination
    if not (sc == "auto" or (isinstance(sc, float) and 0 <= sc < 0.5)) or cfg.screening.outlier_k <= 0:
        raise CostfilterError(f"screening.contamination must be 'auto' or a fraction in [0, 0.5), and outlier_k > 0; "
                              f"got {sc!r}, {cfg.screening.outlier_k}")
    r = c.review_false_reject_rate
    if r is not None and not c.false_reject_rate < r < 1:
        raise CostfilterError(f"review_false_reject_rate must be in (false_reject_rate, 1), got {r}")


#: (section, option) → the value that reproduces a model saved before the option existed.
LEGACY_VALUES: dict[tuple[str, str], Any] = {
    ("features", "pad_neighbourhood"): False,
    ("memory", "search_precision"): "float32",
    ("memory", "bank_size"): 1000,
    ("calibration", "holdout_fraction"): 0.1,
    ("synthesis", "self_fill"): 0.0,
    ("synthesis", "photometric"): False,
    ("costfilter", "volume"): "sorted",
    ("costfilter", "blend_on"): "base",
    ("costfilter", "n_templates"): 3,
}


#: (section, option) of an older layout → (section path, option) where it lives now.
MOVED: dict[tuple[str, str], tuple[str, str]] = {
    **{("costfilter", k): ("costfilter.training", k)
       for k in ("steps", "time_budget_s", "batch_size", "lr", "val_every", "n_val")},
    **{("dfm", k): ("dfm.training", k) for k in ("steps", "time_budget_s", "batch_size", "lr", "val_every", "n_val")},
    ("costfilter", "texture_dir"): ("synthesis", "texture_dir"),
    ("costfilter", "foreground_threshold"): ("synthesis", "foreground_threshold"),
}


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the annotated type ``hint`` (int, float, bool, str, tuples of them, each
    optionally ``| None``); anything else is a one-line error. Ints are accepted for floats."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:  # e.g. "auto" or a number: the first type that fits
            try:
                return _check_type(value, option, where)
            except CostfilterError:
                pass
        hint = options[-1]
        args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise CostfilterError(f"{where}: expected a list, got {value!r:.60}")
        return tuple(_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
          str: lambda v: isinstance(v, str)}.get(hint)
    if ok is not None and not ok(value):
        raise CostfilterError(f"{where}: expected {'a finite number' if hint is float else hint.__name__}, "
                              f"got {value!r:.60}")
    return float(value) if hint is float else value


def build(cls: Any, data: dict[str, Any], where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = set(data) - set(names)
    if unknown:
        raise CostfilterError(f"{where}: unknown option(s) {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise CostfilterError(f"{where}.{key}: expected a mapping")
            kwargs[key] = build(type(default), value, f"{where}.{key}")
        else:
            kwargs[key] = _check_type(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def hf_defaults(f: Any, *, layers_given: bool, size_given: bool) -> list[str]:
    """Settle an ``hf:PATH`` backbone's options the user left out, from the folder's
    ``config.json`` (no torch, no transformers): the folder made absolute (a model fitted from
    one directory must load from any other); without ``layers`` the middle blocks (the first
    quarter and the last sixth left out, as CostFilter-AD's reference taps 3–10 of 12) in two
    groups when there are more than four; without ``image_size`` the default rounded to a
    multiple of the patch size. Returns one line per value chosen, to tell the user."""
    import json
    from pathlib import Path

    if not f.backbone.startswith("hf:"):
        return []
    folder = Path(f.backbone.split(":", 1)[1]).expanduser().resolve()
    f.backbone = f"hf:{folder}"
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # the backbone itself says what is wrong with the folder, in one line
    vision = raw.get("vision_config") or raw
    notes = []
    depth, patch = vision.get("num_hidden_layers"), vision.get("patch_size")
    if not layers_given and isinstance(depth, int) and depth >= 1:
        first, last = max(1, depth // 4), max(1, depth - depth // 6)
        f.layers = tuple(range(first, last + 1))
        if not f.layer_groups and len(f.layers) > 4 and len(f.layers) % 2 == 0:
            f.layer_groups = 2
        grouped = f" in {f.layer_groups} groups" if f.layer_groups else ""
        notes.append(f"layers: blocks {first}–{last} of {depth}{grouped} (the middle blocks; --layers to choose)")
    if not size_given and isinstance(patch, int) and patch > 0 and f.image_size % patch:
        size = max(patch, round(f.image_size / patch) * patch)
        notes.append(f"image size: {size} px, the multiple of the patch size {patch} nearest {f.image_size} "
                     "(--image-size to choose)")
        f.image_size = size
    return notes
