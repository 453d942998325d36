"""Atomic file writes: a temp file in the target folder, fsync, then rename.

A crash or Ctrl-C mid-write leaves either the old file or nothing, never half a file. A kill
(SIGKILL) can still leave the hidden temp file; its name carries the writer's process id, so the
next write to the same place removes temp files whose writer is gone.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import CostfilterError

_umask_lock = threading.Lock()


def _umask() -> int:
    # os.umask can only be read by setting it; the lock keeps two threads from racing on it.
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain ``open()`` would give a new file under the current umask."""
    return 0o666 & ~_umask()


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _temp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}."


def remove_stale_temps(path: Path, *, whole_folder: bool = False) -> list[Path]:
    """Remove the hidden temp files (``.<name>.<pid>.<random>.tmp``) that killed writers of
    ``path`` left (``whole_folder``: of any file in the folder ``path``); returns them."""
    folder, start = (path, ".") if whole_folder else (path.parent, f".{path.name}.")
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for p in entries:
        if not (p.name.startswith(start) and p.name.endswith(".tmp")) or not p.is_file():
            continue
        parts = p.name[:-4].rsplit(".", 2)  # ".name", pid, random
        if len(parts) == 3 and parts[1].isdigit() and pid_alive(int(parts[1])):
            continue
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def check_writable(path: Path, force: bool) -> None:
    """Before any work: refuse to overwrite an existing file unless ``force``, refuse a folder,
    and check that the file can be created where it is to go (one line, not a traceback after
    an hour's fit). Stale temp files of an earlier killed write there are removed."""
    path = Path(path)
    if path.is_dir():
        raise CostfilterError(f"{path}: is a folder; give a file name")
    if path.exists() and not force:
        raise CostfilterError(f"{path}: already exists (use --force to overwrite)")
    check_folder_writable(path.parent)
    remove_stale_temps(path)


def check_folder_writable(folder: Path) -> None:
    """Refuse (one line) when files cannot be created in ``folder`` (or, if it does not exist
    yet, in the nearest folder above it that does)."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CostfilterError(f"{folder}: cannot create it ({existing} is not a folder)")
    try:  # a real probe: access() is wrong for root without CAP_DAC_OVERRIDE and on read-only mounts
        fd, probe = tempfile.mkstemp(prefix=".costfilter-write-test.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CostfilterError(f"{folder}: cannot write there ({exc.strerror or exc})") from None


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.
    The file gets the mode the umask gives new files (``mkstemp`` alone would make it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, file_mode())
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


class NewFolder:
    """A folder made fresh for one record, whose files are written, then synced, before anything
    refers to it; in steps, so that a caller can write some files early (an upload, while it is
    decoded and scored) and the rest later, and sync on another thread meanwhile.

    No temp file and rename per file: nothing refers to a fresh folder until the caller commits
    a reference to it (a history row), so a crash leaves at worst an unreferenced folder. That
    saves three system calls and a re-open per file on a request's path. On any failure, in a
    write or a sync, the folder is removed again; an existing folder is refused
    (``FileExistsError``) rather than written into or removed.
    """

    def __init__(self, folder: Path | str):
        self.path = Path(folder)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.mkdir()
        self._open: list[int] = []  # written, not yet synced
        self._lock = threading.Lock()  # writes and syncs may come from two threads

    def write(self, files: dict[str, bytes]) -> None:
        """Create and write each of ``files`` (name → content); a name already there is refused."""
        with self._lock:
            try:
                for name, data in files.items():
                    self._open.append(os.open(self.path / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                              | getattr(os, "O_CLOEXEC", 0), 0o666))
                    view = memoryview(data)
                    while view:
                        view = view[os.write(self._open[-1], view):]
            except BaseException:
                self._remove()
                raise

    def sync(self) -> None:
        """Sync every file written so far to disk; must have returned before anything refers to
        the folder."""
        with self._lock:
            try:
                # Written first, synced after: the first sync's journal commit carries the others' data.
                for fd in self._open:
                    os.fsync(fd)
            except BaseException:
                self._remove()
                raise
            finally:
                self._close()

    def remove(self) -> None:
        """Remove the folder and what was written into it (the record will not be kept)."""
        with self._lock:
            self._remove()

    def _close(self) -> None:
        while self._open:
            os.close(self._open.pop())

    def _remove(self) -> None:
        import shutil

        self._close()
        shutil.rmtree(self.path, ignore_errors=True)


def write_text(path: Path | str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_with(path: Path | str, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def move_no_clobber(src: Path, dst: Path) -> Path:
    """Move ``src`` to ``dst``, or beside it as ``name-1.ext``, ``name-2.ext``… when that exists;
    never replaces a file. Returns where it went. Within one filesystem the move is a hard link
    then an unlink (the link fails, atomically, if the name is taken); across filesystems the
    content is copied atomically first, and only then is ``src`` removed."""
    import errno
    import shutil

    dst.parent.mkdir(parents=True, exist_ok=True)
    for n in range(10_000):
        target = dst if n == 0 else dst.with_name(f"{dst.stem}-{n}{dst.suffix}")
        try:
            os.link(src, target)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
            if target.exists():
                continue
            with atomic_path(target) as tmp:  # another filesystem, or one without hard links
                shutil.copyfile(src, tmp)
        os.unlink(src)
        return target
    raise CostfilterError(f"{dst}: 10,000 files of this name already there")
