"""What ``predict`` scores, with either engine: image paths from files, folders (recursively),
glob patterns, list files (``.txt``: one path a line; ``.csv``: a ``path``/``image`` column,
else the first) and, for ``--engine ray``, URIs that pyarrow's filesystems (``s3://…``,
``gs://…``, ``hdfs://…``, ``file://…``) or an installed fsspec implementation understand.

No cloud code of our own: a URI is opened through :func:`pyarrow.fs.FileSystem.from_uri`, else
fsspec, so it works exactly when the user has that filesystem's support installed.
"""

from __future__ import annotations

import csv
import glob
import os
from pathlib import Path
from typing import Any

from .data.imageio import IMAGE_EXTENSIONS, is_image_file
from .errors import CostfilterError

LIST_SUFFIXES = (".txt", ".csv", ".lst")


def is_uri(source: str) -> bool:
    """True for ``scheme://…`` (a single-letter scheme is a Windows drive, not a URI)."""
    scheme, sep, _ = source.partition("://")
    return bool(sep) and len(scheme) > 1 and scheme.replace("+", "").isalnum()


def filesystem_of(uri: str) -> tuple[Any, str]:
    """``(pyarrow filesystem, path inside it)`` for a URI: pyarrow's own filesystems (s3, gs,
    hdfs, file) first, else any fsspec implementation the user has installed, wrapped for pyarrow."""
    try:
        from pyarrow import fs
    except ImportError:
        raise CostfilterError(f"{uri}: reading URIs needs pyarrow (pip install 'costfilter[ray]')") from None
    try:
        return fs.FileSystem.from_uri(uri)
    except ValueError as exc:  # ArrowInvalid: a scheme pyarrow does not know
        try:
            import fsspec

            filesystem, path = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as fs_exc:
            raise CostfilterError(f"{uri}: no filesystem for this URI ({str(exc).splitlines()[0]}; "
                                  f"fsspec: {fs_exc})") from None
        return fs.PyFileSystem(fs.FSSpecHandler(filesystem)), path


def _uri_images(uri: str) -> list[str]:
    """A URI naming one image, or a folder whose images (recursively) are listed."""
    from pyarrow import fs

    filesystem, root = filesystem_of(uri)
    try:
        info = filesystem.get_file_info(root)
        if info.type == fs.FileType.File:
            return [uri]
        if info.type != fs.FileType.Directory:
            raise CostfilterError(f"{uri}: not found")
        entries = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
    except CostfilterError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own types (ArrowInvalid, OSError) per filesystem
        raise CostfilterError(f"{uri}: cannot list ({str(exc).splitlines()[0]})") from None
    prefix = uri[: len(uri) - len(uri.partition("://")[2])]
    return sorted(prefix + e.path for e in entries
                  if e.type == fs.FileType.File and Path(e.path).suffix.lower() in IMAGE_EXTENSIONS
                  and not Path(e.path).name.startswith("."))


def _list_file(path: Path) -> list[str]:
    """Paths named in a ``.txt``/``.lst`` (one a line, ``#`` comments) or ``.csv`` file; relative
    paths are taken from the list file's folder."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(text.splitlines()))
        if not rows:
            return []
        header = [h.strip().lower() for h in rows[0]]
        col = next((header.index(k) for k in ("path", "image", "file") if k in header), None)
        entries = [r[col if col is not None else 0] for r in (rows[1:] if col is not None else rows) if r]
    else:
        entries = [line.split("#", 1)[0] for line in text.splitlines()]
    entries = [e.strip() for e in entries if e.strip()]
    return [e if is_uri(e) or Path(e).is_absolute() else str(path.parent / e) for e in entries]


def path_key(path: str) -> str:
    """What identifies a source file: a local path resolved (symlinks, ``..``, the working
    folder), so one file spelled two ways is one file; a URI as it is."""
    return path if is_uri(path) else os.path.realpath(path)


def _inside(path: str, folder: str | None) -> bool:
    return folder is not None and (path == folder or path.startswith(folder.rstrip(os.sep) + os.sep))


def _folder_images(root: Path) -> list[str]:
    """Images anywhere under ``root``; hidden files and folders (a run's partial output, a
    results table's parts) are skipped."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(folder, f) for f in sorted(files) if is_image_file(Path(folder, f))]
    return found


def expand_sources(sources: list[str] | tuple[str, ...], exclude: Path | str | None = None) -> list[str]:
    """Image paths (strings, in order, each file once however it is spelled) from every kind of
    source. Nothing under ``exclude`` (the run's own output folder) is listed, so a run never
    scores its own pictures.

    A missing local path, a pattern that matches nothing or an empty folder is a one-line error;
    a missing file *named in a list* is not: it becomes an error row when scored, so one stale
    line does not stop a night's job.
    """
    skip = os.path.realpath(exclude) if exclude is not None else None
    out: dict[str, str] = {}
    for source in sources:
        if is_uri(source):
            found = _uri_images(source)
        elif any(ch in source for ch in "*?["):
            found = sorted(p for p in glob.glob(source, recursive=True) if is_image_file(Path(p)))
        else:
            p = Path(source)
            if p.is_dir():
                found = _folder_images(p)
            elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
                found = _list_file(p)
            elif p.exists() or p.is_symlink():
                found = [str(p)]  # not a regular file (a FIFO, a device): refused when read, by name
            else:
                raise CostfilterError(f"{source}: file not found")
        kept = [f for f in found if not _inside(path_key(f), skip)]
        if not kept:
            why = " outside the output folder" if found else ""
            raise CostfilterError(f"{source}: no images found{why}")
        for f in kept:
            out.setdefault(path_key(f), f)
    return list(out.values())


def read_bytes(path: str) -> bytes:
    """A file's content, local or through pyarrow's filesystem for a URI."""
    if not is_uri(path):
        return Path(path).read_bytes()
    filesystem, inner = filesystem_of(path)
    with filesystem.open_input_stream(inner) as fh:
        return fh.read()
