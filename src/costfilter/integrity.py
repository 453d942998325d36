"""Integrity and origin of model files: a SHA-256 over everything in a file says it is whole and
unedited; an optional HMAC-SHA256 signature with a key only its maker holds says who made it.

The key comes from ``--sign-key`` or the ``COSTFILTER_SIGN_KEY`` environment variable. With a key
set, files are signed when written and refused when read unless their signature matches, so a
production line can refuse any model it did not make. Without one, files are written unsigned
and signatures are not checked (the hash always is).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from .errors import CheckpointError
from .provenance import file_sha256

ENV_KEY = "COSTFILTER_SIGN_KEY"


def signing_key(key: str | None = None) -> bytes | None:
    """The key given, else the environment's, as bytes (None: no signing)."""
    key = key if key is not None else os.environ.get(ENV_KEY)
    return key.encode("utf-8") if key else None


def sign(digest: str, key: bytes) -> str:
    """HMAC-SHA256 of a file's content hash."""
    return hmac.new(key, digest.encode("ascii"), hashlib.sha256).hexdigest()


def check_signature(path: object, digest: str, signature: str | None, key: bytes | None) -> str:
    """Verify ``signature`` of ``digest`` when a key is set; returns a one-word status for the
    model card (``valid``, ``unchecked`` without a key, ``unsigned``). A missing or wrong
    signature under a key is a one-line error."""
    if key is None:
        return "unchecked" if signature else "unsigned"
    if not signature:
        raise CheckpointError(f"{path}: not signed, but a signing key is set ({ENV_KEY} or --sign-key): refused")
    if not hmac.compare_digest(signature, sign(digest, key)):
        raise CheckpointError(f"{path}: signature does not match this signing key: refused (made elsewhere, or edited)")
    return "valid"


def parse_version(path: object, value: str | None) -> int:
    """A file's format version as an int; anything else is a one-line error."""
    try:
        return int(value or "0")
    except ValueError:
        raise CheckpointError(f"{path}: malformed header (format version {value!r} is not a number)") from None


def weights_source(features: dict) -> str | None:
    """The file or folder a model's backbone weights come from, when they are not in a package:
    ``features.weights``, or the folder of an ``hf:PATH`` backbone."""
    if features.get("weights"):
        return str(features["weights"])
    backbone = str(features.get("backbone") or "")
    return str(Path(backbone.split(":", 1)[1]).expanduser()) if backbone.startswith("hf:") else None


def weights_digest(path: Path | str) -> str:
    """SHA-256 of a weights file, or of a model folder: its config, preprocessing and
    ``.safetensors`` files, each by name and content (what changes the model's answers)."""
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.suffix == ".safetensors" or f.name in ("config.json", "preprocessor_config.json")):
            h.update(f.name.encode() + b"\0" + file_sha256(f).encode() + b"\n")
    return h.hexdigest()


def check_weights_file(path: Path | str, config: dict, state: dict) -> None:
    """The backbone weights a model was fitted with (a file, or an hf: model folder) must be the
    same now: they change every answer, and the checkpoint's hash and signature cover only their
    recorded SHA-256."""
    weights = weights_source(config.get("features") or {}) if isinstance(config, dict) else None
    recorded = state.get("weights_sha256") if isinstance(state, dict) else None
    if not weights or not recorded:
        return
    if not Path(weights).exists():
        raise CheckpointError(f"{path}: its backbone weights {weights} are missing")
    if weights_digest(weights) != recorded:
        raise CheckpointError(f"{path}: its backbone weights {weights} have changed since the fit "
                              f"(sha256 {recorded[:12]}… expected); restore them or refit")
