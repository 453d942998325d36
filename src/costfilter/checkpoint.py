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
from .errors import CheckpointError, CostfilterError
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


#: Tensors that checkpoints written before they existed lack; the fresh model's defaults stand in:
#: a bank's source image per row (leave-one-out calibration), the learned categories' rows and
#: DFM's replayed images (continual learning).
LATER_TENSORS = (".owners", "router.offsets", "replay", "replay_category")


def load_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load saved tensors into a freshly built model. Buffers whose size depends on the data
    (memory bank, templates) are replaced; a parameter of the wrong shape is an error."""
    own = model.state_dict()
    unexpected = sorted(set(tensors) - set(own))
    missing = sorted(k for k in own if k not in tensors and not k.startswith("features.")
                     and not k.endswith(LATER_TENSORS))
    if unexpected or missing:
        raise CostfilterError(f"unexpected {unexpected[:3]} / missing {missing[:3]} tensors")
    for key, value in tensors.items():
        expected = own[key]
        if value.dtype != expected.dtype:
            raise CostfilterError(f"{key}: dtype {value.dtype} where the model has {expected.dtype}")
        if expected.shape != value.shape:
            owner, _, name = key.rpartition(".")
            module = model.get_submodule(owner)
            # Only a data-sized buffer may differ, and only in its row count; a placeholder with
            # rows (a bank) must stay non-empty, or scoring would index nothing.
            if (name not in module._buffers or value.ndim != expected.ndim or value.shape[1:] != expected.shape[1:]
                    or (expected.ndim and expected.shape[0] and not value.shape[0])):
                raise CostfilterError(f"{key}: shape {tuple(value.shape)} does not fit {tuple(expected.shape)}")
            module._buffers[name] = value.clone()
    for rows, owners in _ROW_OWNERS:
        for key in [k for k in tensors if k.endswith(owners)]:
            bank = key[: -len(owners)] + rows
            if bank in tensors and len(tensors[key]) != len(tensors[bank]):
                raise CostfilterError(f"{key}: {len(tensors[key])} rows for the {len(tensors[bank])} of {bank}")
    model.load_state_dict(tensors, strict=False)


#: (rows tensor, per-row owner tensor) name endings that must have equal lengths
_ROW_OWNERS = (("bank", "owners"), ("templates", "template_owners"))
