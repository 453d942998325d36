"""Run records: what produced a result, so a decision can be traced to its model and data."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .atomic import write_text
from .report import environment


def file_sha256(path: Path | str, block: int = 1 << 20) -> str:
    """SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def inputs_digest(paths: Sequence[Path | str]) -> dict[str, Any]:
    """A digest of a list of input files: names, sizes and content hashes, order-independent."""
    entries = sorted((str(Path(p).name), Path(p).stat().st_size, file_sha256(p)) for p in paths)
    h = hashlib.sha256()
    for name, size, digest in entries:
        h.update(f"{name}\t{size}\t{digest}\n".encode())
    return {"count": len(entries), "bytes": sum(e[1] for e in entries), "sha256": h.hexdigest()}


def write_record(path: Path, command: str, *, config: dict[str, Any] | None = None, model: Path | None = None,
                 inputs: Sequence[Path | str] = (), digest: dict[str, Any] | None = None,
                 timings: dict[str, float] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``path`` (JSON) describing one run of ``command``; returns the record.

    ``digest``: an :func:`inputs_digest` already computed for ``inputs`` (hashing is not repeated).
    """
    record = {
        "command": command,
        "argv": sys.argv,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "model": str(model) if model else None,
        "model_sha256": file_sha256(model) if model and Path(model).is_file() else None,
        "inputs": digest if digest is not None else (inputs_digest(inputs) if inputs else None),
        "timings_s": timings or {},
        "environment": environment(),
    }
    record.update(extra or {})
    write_text(path, json.dumps(record, indent=2) + "\n")
    return record
