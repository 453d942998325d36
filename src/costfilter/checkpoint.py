"""Checkpoints that are safe to open: safetensors tensors + JSON metadata + a content hash.

No pickle anywhere: a model file from a stranger can at worst hold wrong numbers, never code.
The SHA-256 over tensor bytes and metadata detects corruption or editing; writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .atomic import write_with
from .errors import CheckpointError

FORMAT = "costfilter-checkpoint"
FORMAT_VERSION = 1


def content_hash(tensors: dict[str, torch.Tensor], config: str, state: str) -> str:
    """SHA-256 over sorted tensor names, dtypes, shapes and bytes, then the config and state JSON."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(config.encode())
    h.update(state.encode())
    return h.hexdigest()


def save_checkpoint(path: Path | str, tensors: dict[str, torch.Tensor], config: dict[str, Any], state: dict[str, Any]) -> str:
    """Write tensors and JSON-able ``config``/``state`` atomically; returns the content hash."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    config_json = json.dumps(config, sort_keys=True)
    state_json = json.dumps(state, sort_keys=True)
    digest = content_hash(tensors, config_json, state_json)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "costfilter_version": __version__,
        "config": config_json,
        "state": state_json,
        "sha256": digest,
    }
    write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return digest


def load_checkpoint(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any], str]:
    """Read and verify a checkpoint: ``(tensors, config, state, sha256)``; any fault is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a costfilter checkpoint ({str(exc).splitlines()[0]})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a costfilter checkpoint (no '{FORMAT}' header)")
    if int(metadata.get("format_version", "0")) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer costfilter (format {metadata['format_version']}); upgrade")
    digest = content_hash(tensors, metadata.get("config", ""), metadata.get("state", ""))
    if digest != metadata.get("sha256"):
        raise CheckpointError(f"{path}: content hash mismatch: the file is corrupt or was modified")
    try:
        return tensors, json.loads(metadata["config"]), json.loads(metadata["state"]), digest
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: checkpoint metadata is unreadable") from None
