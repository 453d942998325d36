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

from .errors import CheckpointError

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
