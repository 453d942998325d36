"""Vision transformers from a local Hugging Face folder (``hf:PATH``): DINO (ViT), DINOv2 with or
without registers, DINOv3 and CLIP image towers, read with transformers from ``config.json`` and
``.safetensors`` weights only (a pickled file could run code), never from the network.

``layers`` are block numbers (1 = the first block's output). Each tapped block's patch tokens
(CLS and register tokens dropped) become a ``(B, D, H / p, W / p)`` map; with ``groups`` the tapped
blocks are split into that many consecutive groups and each group's maps are averaged, as
CostFilter-AD's reference fuses 8 middle blocks of a DINOv2 into 2.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from ..errors import CostfilterError
from .base import Backbone

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: OpenAI CLIP's normalisation, for folders without a preprocessor_config.json
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
KNOWN = ("vit", "dinov2", "dinov2_with_registers", "dinov3_vit", "clip", "clip_vision_model")


def hf_folder(name: str) -> Path:
    """The folder an ``hf:PATH`` backbone name points at."""
    return Path(name.split(":", 1)[1]).expanduser()


class HFViTBackbone(Backbone):
    """A frozen ViT whose tapped blocks' patch tokens are feature maps (stride = patch size)."""

    def __init__(self, folder: Path, layers: Sequence[int], image_size: int, groups: int = 0,
                 allow_partial: bool = False):
        super().__init__()
        try:
            from transformers import AutoConfig, AutoModel, CLIPVisionModel
        except ImportError:
            raise CostfilterError("hf: backbones need transformers: pip install 'costfilter[clip]'") from None
        if not (folder / "config.json").is_file():
            raise CostfilterError(f"{folder}: not a Hugging Face model folder (no config.json)")
        if not any(folder.glob("*.safetensors")):
            raise CostfilterError(f"{folder}: no .safetensors weights; pickled weights are refused because they can "
                                  "run code (convert them with safetensors first)")
        try:
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
            kind = config.model_type
            if kind not in KNOWN:
                raise CostfilterError(f"{folder}: model type {kind!r} is not a supported ViT ({', '.join(KNOWN)})")
            loader = CLIPVisionModel if kind.startswith("clip") else AutoModel
            with _quiet():
                self.net, info = loader.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                        output_loading_info=True)
        except CostfilterError:
            raise
        except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a bad folder
            raise CostfilterError(f"{folder}: cannot load the model ({str(exc).splitlines()[0]})") from None
        # transformers 4.x gives lists, 5.x sets: sorted, they index alike and name the same first key
        missing = sorted(k for k in info.get("missing_keys", []) if "pooler" not in k and "head" not in k)
        unexpected = sorted(map(str, info.get("unexpected_keys", [])))
        mismatched = sorted(map(str, info.get("mismatched_keys", [])))
        if mismatched or (missing and not allow_partial):
            first = mismatched[0] if mismatched else missing[0]
            raise CostfilterError(f"{folder}: the weights do not fit its config.json ({len(missing)} missing, "
                                  f"{len(mismatched)} of another shape; first: {first}; first "
                                  f"unexpected: {unexpected[0] if unexpected else 'none'})")
        if missing:
            warnings.warn(f"{folder}: {len(missing)} weights are not in the files (first: {missing[0]}); they stay "
                          "randomly initialised (--allow-partial-weights)", stacklevel=2)
        vision = getattr(self.net.config, "vision_config", None) or self.net.config
        self.patch = int(vision.patch_size)
        self.prefix = 1 + int(getattr(vision, "num_register_tokens", 0) or 0)  # CLS, then registers
        depth = int(vision.num_hidden_layers)
        if not layers or min(layers) < 1 or max(layers) > depth:
            raise CostfilterError(f"{folder}: layers {list(layers)} must be block numbers 1–{depth}")
        if image_size % self.patch:
            raise CostfilterError(f"image_size {image_size} must be a multiple of {folder.name}'s patch size "
                                  f"{self.patch} (e.g. {image_size // self.patch * self.patch or self.patch})")
        if groups and len(layers) % groups:
            raise CostfilterError(f"{len(layers)} layers cannot be split into {groups} equal groups")
        self.layers, self.groups = tuple(layers), groups
        width = int(vision.hidden_size)
        self.channels = (width,) * (groups or len(layers))
        self.strides = (self.patch,) * len(self.channels)
        mean, std = _normalisation(folder, kind)
        # Inputs arrive ImageNet-normalised (the FeatureExtractor's contract); re-normalise for this model.
        self.register_buffer("scale", (torch.tensor(IMAGENET[1]) / torch.tensor(std)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((torch.tensor(IMAGENET[0]) - torch.tensor(mean)) / torch.tensor(std)
                                       ).view(1, 3, 1, 1), persistent=False)
        params = inspect.signature(self.net.forward).parameters
        self.extra = {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in params else {}
        self.freeze()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b, _, h, w = x.shape
        out = self.net(pixel_values=x * self.scale + self.shift, output_hidden_states=True, **self.extra)
        hidden = out.hidden_states  # embeddings, then one per block
        gh, gw = h // self.patch, w // self.patch
        maps = [hidden[i][:, self.prefix:, :].transpose(1, 2).reshape(b, -1, gh, gw) for i in self.layers]
        if self.groups:
            size = len(maps) // self.groups
            maps = [torch.stack(maps[g * size:(g + 1) * size]).mean(0) for g in range(self.groups)]
        return maps


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers' own loading progress bar off (costfilter draws its own where work is long)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _normalisation(folder: Path, kind: str) -> tuple[Sequence[float], Sequence[float]]:
    """The mean and std the model was trained with: its preprocessor_config.json, else its family's."""
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        try:
            cfg = json.loads(pre.read_text())
            if len(cfg["image_mean"]) == 3 and len(cfg["image_std"]) == 3:
                return cfg["image_mean"], cfg["image_std"]
        except (ValueError, KeyError, TypeError):
            raise CostfilterError(f"{pre}: no image_mean / image_std of 3 values each") from None
    return CLIP if kind.startswith("clip") else IMAGENET


def build_hf(name: str, layers: Sequence[int], image_size: int, weights: str | None, groups: int = 0,
             allow_partial: bool = False) -> Backbone:
    """Builder for ``hf:PATH`` names (the folder holds the weights; ``weights`` must be unset)."""
    if weights:
        raise CostfilterError("an hf: backbone reads its weights from its folder; drop --weights")
    return HFViTBackbone(hf_folder(name), layers, image_size, groups, allow_partial)
