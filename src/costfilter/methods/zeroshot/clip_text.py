"""Text-guided filtering of reference patches for zero-shot scoring (FiSeCLIP-style).

A CLIP model compares every patch of an image with text prompts for a normal and a damaged
object. Patches that CLIP finds more likely damaged than a threshold are not used as references
when the other images of the batch are scored, so a defect in one reference cannot make the same
defect elsewhere look normal. The CLIP model comes from a local folder in Hugging Face format
(``config.json``, ``model.safetensors``, tokenizer files), never from the network, and only
safetensors weights are read: a pickled ``pytorch_model.bin`` could run code.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn

from ...errors import CostfilterError

NORMAL_PROMPTS = ("a photo of a flawless {}.", "a photo of a perfect {}.", "a photo of an intact {}.",
                  "a close-up photo of a {} without defect.")
ANOMALOUS_PROMPTS = ("a photo of a damaged {}.", "a photo of a {} with a defect.", "a photo of a broken {}.",
                     "a close-up photo of a {} with a flaw.")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipPatchText(nn.Module):
    """``forward((B, 3, S, S) uint8 or [0, 1] images) → (B, g, g)`` probability that each CLIP
    patch shows a damaged ``object_name`` (``g`` = CLIP input size / patch size).

    ``local_correlation``: CLIP's last block attends from each token to the tokens it matches
    globally, so its patch tokens say little about their own place. FiSeCLIP restores the local
    correlation: the last block's attention is replaced by each token's similarity to the others
    in query space and in key space (tokens attend to what resembles them), and its MLP is left
    out. The earlier blocks and all weights are CLIP's own; nothing is trained.
    """

    def __init__(self, folder: str | Path, object_name: str = "object", local_correlation: bool = True):
        super().__init__()
        self.local_correlation = local_correlation
        try:
            from transformers import CLIPModel, CLIPTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise CostfilterError("the CLIP text filter needs the clip extra: pip install 'costfilter[clip]'") from None
        folder = Path(folder)
        if not folder.is_dir():
            raise CostfilterError(f"{folder}: CLIP model folder not found (expected a Hugging Face CLIP folder "
                                  "with config.json, model.safetensors and tokenizer files)")
        if not any(folder.glob("*.safetensors")):
            raise CostfilterError(f"{folder}: no .safetensors weights; pickled weights are refused because they can "
                                  "run code (convert them with safetensors first)")
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model, info = CLIPModel.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                    output_loading_info=True)
            tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
            raise CostfilterError(f"{folder}: not a loadable CLIP model ({str(exc).splitlines()[0]})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        # A missing tensor would stay randomly initialised and its prompts would mean nothing.
        missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
        if missing or info.get("mismatched_keys"):
            first = missing[0] if missing else str(info["mismatched_keys"][0])
            raise CostfilterError(f"{folder}: the CLIP weights do not fit its config.json ({len(missing)} missing, "
                                  f"{len(info.get('mismatched_keys', []))} of another shape; first: {first})")
        self.model = model.eval().requires_grad_(False)
        vision = model.config.vision_config
        self.input_size = vision.image_size
        self.grid = vision.image_size // vision.patch_size
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad():
            texts = [self._class_embedding(tokenizer, prompts, object_name) for prompts in (NORMAL_PROMPTS,
                                                                                              ANOMALOUS_PROMPTS)]
        self.register_buffer("text", torch.stack(texts), persistent=False)  # (2, D): normal, anomalous

    def _class_embedding(self, tokenizer, prompts: tuple[str, ...], object_name: str) -> torch.Tensor:
        tokens = tokenizer([p.format(object_name) for p in prompts], padding=True, return_tensors="pt")
        out = self.model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        emb = F.normalize(self.model.text_projection(out.pooler_output), dim=-1)
        return F.normalize(emb.mean(0), dim=0)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                          align_corners=False)
        vision = self.model.vision_model
        out = vision(pixel_values=(x - self.mean) / self.std, output_hidden_states=self.local_correlation)
        tokens = self.correlated_last_block(out.hidden_states[-2]) if self.local_correlation else out.last_hidden_state
        # Patch tokens through the same head as the image token, so they live in the text space.
        patches = vision.post_layernorm(tokens[:, 1:])
        patches = F.normalize(self.model.visual_projection(patches), dim=-1)  # (B, g·g, D)
        logits = self.model.logit_scale.exp() * patches @ self.text.t()  # (B, g·g, 2)
        return logits.softmax(-1)[..., 1].view(-1, self.grid, self.grid)

    def correlated_last_block(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(B, T, W)`` input of CLIP's last vision block → its output with correlative
        self-attention (q·qᵀ and k·kᵀ, averaged) and without the MLP."""
        block = self.model.vision_model.encoder.layers[-1]
        attn = block.self_attn
        b, t, width = hidden.shape
        heads = attn.num_heads
        x = block.layer_norm1(hidden)

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, heads, width // heads).transpose(1, 2)  # (B, heads, T, d)

        q, k, v = split(attn.q_proj(x)), split(attn.k_proj(x)), split(attn.v_proj(x))
        scale = (width // heads) ** -0.5
        weights = ((q @ q.transpose(-1, -2) * scale).softmax(-1) + (k @ k.transpose(-1, -2) * scale).softmax(-1)) / 2
        mixed = (weights @ v).transpose(1, 2).reshape(b, t, width)
        return hidden + attn.out_proj(mixed)
