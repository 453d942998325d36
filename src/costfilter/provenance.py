"""Provenance: where a result came from. The environment (git commit, versions, CPU), digests of
input files, peak memory, and the JSON run record each command writes beside its outputs."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from .atomic import write_text


def git_commit(cwd: Path | None = None) -> str | None:
    """The checkout's HEAD commit (with ``+dirty`` when it has changes), or None outside git."""
    try:
        cwd = cwd or Path(__file__).resolve().parent
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if sha.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Versions, CPU count, threads and the compute device: what a reader needs to compare
    timings across machines."""
    versions = {}
    for pkg in ("costfilter", "torch", "numpy", "scipy", "pillow", "safetensors",
                "efficientnet-lite-pytorch", "faiss-cpu", "onnxruntime", "ray", "pyarrow", "transformers"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": _torch_threads(),
        "compute": _compute(),
        "versions": versions,
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux ``ru_maxrss`` is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def file_sha256(path: Path | str, block: int = 1 << 20) -> str:
    """SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def inputs_digest(paths: Sequence[Path | str], hashes: Sequence[str] | None = None) -> dict[str, Any]:
    """A digest of a list of input files: names, sizes and content hashes, order-independent
    (``hashes``: their SHA-256s, when already computed)."""
    hashes = hashes if hashes is not None else [file_sha256(p) for p in paths]
    entries = sorted((str(Path(p).name), Path(p).stat().st_size, h) for p, h in zip(paths, hashes))
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
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
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


def _compute() -> str:
    """The run's default device and precision (``cpu, fp32``; a GPU's name with it), from
    :mod:`costfilter.compute` if the run loaded it, else as the environment asks."""
    asked = f"{os.environ.get('COSTFILTER_DEVICE', 'cpu')}, {os.environ.get('COSTFILTER_PRECISION', 'fp32')}"
    compute = sys.modules.get("costfilter.compute")
    if compute is None:
        return asked
    from .errors import CostfilterError

    try:
        return str(compute.default().describe())
    except CostfilterError:  # a device this machine lacks: the run failed before it computed
        return asked


def _torch_threads() -> int | None:
    """torch's intra-op threads, if torch is already loaded (provenance never loads it)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None
