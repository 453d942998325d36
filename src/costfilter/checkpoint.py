"""Checkpoints that are safe to open: safetensors tensors + JSON metadata + a content hash.

No pickle anywhere: a model file from a stranger can at worst hold wrong numbers, never code.
The SHA-256 over the format header, tensor bytes and metadata detects corruption or editing; an
optional signature (:mod:`.integrity`) says who wrote the file; writes are atomic.
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
from .integrity import check_signature, parse_version, sign

FORMAT = "costfilter-checkpoint"
#: 2: the format header is inside the hash, and files may be signed
FORMAT_VERSION = 2


def content_hash(tensors: dict[str, torch.Tensor], config: str, state: str, version: int = FORMAT_VERSION) -> str:
    """SHA-256 over the format header (from version 2), sorted tensor names, dtypes, shapes and
    bytes, then the config and state JSON."""
    h = hashlib.sha256()
    if version >= 2:
        h.update(f"{FORMAT}|{version}|".encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(config.encode())
    h.update(state.encode())
    return h.hexdigest()


def save_checkpoint(path: Path | str, tensors: dict[str, torch.Tensor], config: dict[str, Any], state: dict[str, Any],
                    sign_key: bytes | None = None) -> str:
    """Write tensors and JSON-able ``config``/``state`` atomically (signed with ``sign_key`` if
    given); returns the content hash."""
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
    if sign_key is not None:
        metadata["signature"] = sign(digest, sign_key)
    try:
        write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    except SafetensorError as exc:  # its own type for I/O failures such as a full disk
        raise CheckpointError(f"{path}: cannot write the checkpoint ({str(exc).splitlines()[0]})") from None
    return digest


def load_checkpoint(path: Path | str, sign_key: bytes | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any], str]:
    """Read and verify a checkpoint: ``(tensors, config, state, sha256)``; any fault is a one-line
    error. With ``sign_key`` its signature must match (see :mod:`.integrity`)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file, so not a checkpoint")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        hint = "; it looks like an ONNX export: name it .onnx" if _looks_like_onnx(path) else ""
        raise CheckpointError(f"{path}: not a costfilter checkpoint ({str(exc).splitlines()[0]}){hint}") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a costfilter checkpoint (no '{FORMAT}' header)")
    version = parse_version(path, metadata.get("format_version"))
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer costfilter (format {version}); upgrade")
    digest = content_hash(tensors, metadata.get("config", ""), metadata.get("state", ""), version)
    if digest != metadata.get("sha256"):
        raise CheckpointError(f"{path}: content hash mismatch: the file is corrupt or was modified")
    check_signature(path, digest, metadata.get("signature"), sign_key)
    try:
        return tensors, json.loads(metadata["config"]), json.loads(metadata["state"]), digest
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: checkpoint metadata is unreadable") from None


def _looks_like_onnx(path: Path) -> bool:
    """An ONNX file is a protobuf whose first field is ``ir_version`` (tag byte 0x08) and which
    names its producer early on; a safetensors file starts with its header's length instead."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return head[:1] == b"\x08" and (b"pytorch" in head or b"onnx" in head.lower() or b"costfilter" in head)


def signature_status(path: Path | str, sign_key: bytes | None) -> str:
    """``valid`` / ``unchecked`` / ``unsigned`` for the model card (the file was loaded already)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata() or {}
    return check_signature(path, metadata.get("sha256", ""), metadata.get("signature"), sign_key)
