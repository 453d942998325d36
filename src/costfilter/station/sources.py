"""Where a station's images come from.

* :class:`HotFolder`: a folder the camera software writes into, woken by the kernel's close-write
  and moved-to events (:class:`FolderEvents`) and listed every ``poll_s`` besides. A file is taken
  once it holds a whole image (and, with ``settle_s``, has not changed for that long), inspected,
  then moved to ``done/`` — or to ``failed/`` beside a ``.reason.txt``, with an ``error``
  message to every sink, when it is not a readable image. The record and the input's
  key are committed before the move, so a restart between the two moves the file on without
  inspecting it again; a file is never overwritten (a taken name gets ``-1``, ``-2``…).
* :class:`StreamSource`: frames from OpenCV's ``VideoCapture`` (RTSP/HTTP URLs, USB devices, video
  files), every N-th and at most F a second; a dropped stream is reopened with back-off.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..atomic import move_no_clobber, write_text
from ..data.imageio import IMAGE_EXTENSIONS, looks_complete
from ..errors import CostfilterError
from ..serve.inspection import Inspected, Inspector, Item
from ..serve.store import StoreUnavailable
from . import config as c

log = logging.getLogger("costfilter.station")
#: names a writer uses while a file is incomplete (browsers, rsync, many camera tools)
PARTIAL = (".tmp", ".part", ".partial", ".crdownload", ".filepart", "~")


class _Source:
    """A thread that feeds an inspector until stopped; ``state`` and counts for /health."""

    kind = ""

    def __init__(self, name: str, target: str, inspector: Inspector):
        self.name, self.target, self.inspector = name, target, inspector
        self.stopping = threading.Event()
        self.woken = threading.Event()  # set by a file event (or stop): look now, not at the next poll
        self.state, self.ok = "starting", True
        #: last sign of life (monotonic seconds), for the station's watchdog
        self.alive_at = time.monotonic()
        self.inspected = self.failed = 0
        self.thread = threading.Thread(target=self._guarded, name=f"source-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.woken.set()
        self.thread.join(timeout=30)

    def wake(self) -> None:
        self.woken.set()

    def beat(self) -> None:
        self.alive_at = time.monotonic()

    def _guarded(self) -> None:
        try:
            self.run()
        except Exception as exc:
            log.exception("source %s stopped", self.name)
            self.state, self.ok = f"stopped: {type(exc).__name__}: {exc}", False

    def run(self) -> None:
        raise NotImplementedError


class HotFolder(_Source):
    kind = "folder"

    def __init__(self, cfg: c.FolderSource, inspector: Inspector, station: str):
        super().__init__(cfg.name, str(cfg.path), inspector)
        self.cfg, self.station = cfg, station
        self.seen: dict[Path, tuple[int, int, float]] = {}  # path → (size, mtime_ns, first seen unchanged)
        self.skip = {p.resolve() for p in (cfg.done, cfg.failed) if p is not None}
        self.inflight: set[Path] = set()  # scored, not yet stored and moved
        self.unreadable: set[str] = set()  # sub-folders already reported as unreadable
        self.waiting: set[Path] = set()  # incomplete images, each logged once
        self.events = FolderEvents(cfg.path, self.wake) if cfg.events else None

    def stop(self) -> None:
        super().stop()
        if self.events is not None:
            self.events.stop()

    def run(self) -> None:
        if self.events is not None:
            self.events.start()
        # Two stages: while one batch is drawn, stored and moved (a writer thread, in order), the
        # next is decoded and scored; on two cores that is ~18 % more images a second.
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"keep-{self.name}")
        pending: Future[bool] | None = None
        backoff = 1.0
        try:
            while not self.stopping.is_set():
                self.beat()
                self.woken.clear()  # before listing: an event from here on is not missed
                try:
                    ready = [p for p in self.ready() if p not in self.inflight]
                except OSError as exc:
                    self.state, self.ok = f"cannot read {self.cfg.path} ({exc.strerror or exc})", False
                    self.stopping.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                items, paths = self.prepare(ready[: self.cfg.batch]) if ready else ([], [])
                scored = self.inspector.score(items) if items else []
                self.inflight.update(paths)
                try:
                    if pending is not None:
                        if not pending.result():  # the store refused: those files stay; wait before more
                            self.stopping.wait(backoff)
                            backoff = min(backoff * 2, 30.0)
                        else:
                            backoff = 1.0
                        pending = None
                except BaseException:
                    self.inspector.drop(scored)  # begun in the store, never to be kept
                    raise
                if items:
                    pending = writer.submit(self.finish, paths, scored)
                elif all(p in self.waiting for p in ready):
                    if self.ok:
                        self.state = "watching"
                    # Woken at once by a close-write or moved-to event; the listing every poll_s
                    # finds what no event announced (network shares).
                    self.woken.wait(self.cfg.poll_s)
        finally:
            if pending is not None:
                pending.result()
            writer.shutdown(wait=True)

    def ready(self) -> list[Path]:
        """Files that have been unchanged for ``settle_s`` (at once when it is 0), oldest first."""
        now = time.monotonic()
        found: dict[Path, tuple[int, int, float]] = {}
        for path in self._files():
            try:
                st = path.stat()
            except FileNotFoundError:
                if path.is_symlink():  # a link to nothing: reported, not left there unseen
                    found[path] = (-1, 0, now)
                continue
            before = self.seen.get(path)
            since = before[2] if before and before[:2] == (st.st_size, st.st_mtime_ns) else now
            found[path] = (st.st_size, st.st_mtime_ns, since)
        self.seen = found
        settle = self.cfg.settle_s
        ready = [p for p, (_, mtime, since) in found.items()
                 if settle == 0 or (now - since >= settle and time.time() - mtime / 1e9 >= settle)]
        self.waiting.intersection_update(found)
        return sorted(ready, key=lambda p: (found[p][1], str(p)))

    def _files(self) -> list[Path]:
        if not self.cfg.path.is_dir():  # os.walk would say nothing: a missing folder must not look idle
            raise FileNotFoundError(errno.ENOENT, "no such folder")
        out = []
        visited: set[tuple[int, int]] = set()
        # Linked sub-folders are followed (a camera tool's output linked in), each real folder once.
        for folder, dirs, files in os.walk(self.cfg.path, onerror=self._unreadable, followlinks=True):
            here = Path(folder)
            try:
                st = here.stat()
            except OSError:
                dirs[:] = []
                continue
            if (st.st_dev, st.st_ino) in visited:  # a link loop, or a folder linked twice
                dirs[:] = []
                continue
            visited.add((st.st_dev, st.st_ino))
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() not in self.skip)
            if not self.cfg.recursive:
                dirs[:] = []
            out += [here / f for f in files if not f.startswith(".") and not f.lower().endswith(PARTIAL)]
        return out

    def _unreadable(self, exc: OSError) -> None:
        if exc.filename not in self.unreadable:  # once per folder, not every poll
            self.unreadable.add(exc.filename)
            log.warning("source %s: cannot read %s (%s); its files wait", self.name, exc.filename,
                        exc.strerror or exc)

    def key(self, path: Path, data: bytes) -> str:
        """What identifies this arrival of an input across restarts: station, source, place, time,
        the file itself (inode and change time: a copy dropped again, even with the same name,
        content and time, is a new arrival) and content."""
        st = path.stat()
        ident = (f"{self.station}\0{self.name}\0{path.relative_to(self.cfg.path)}\0{st.st_mtime_ns}\0"
                 f"{st.st_dev}\0{st.st_ino}\0{st.st_ctime_ns}\0")
        return hashlib.sha256(ident.encode() + hashlib.sha256(data).digest()).hexdigest()

    def prepare(self, paths: list[Path]) -> tuple[list[Item], list[Path]]:
        """Read ``paths`` into items (and their paths); a file that is not an image goes to
        ``failed/``, one already stored before a restart goes on to ``done/``, an image still
        being written waits (up to ``incomplete_timeout_s`` after its last change)."""
        items, kept = [], []
        for path in paths:
            rel = path.relative_to(self.cfg.path)
            try:
                if path.is_symlink() and not path.exists():
                    raise CostfilterError(f"{rel}: a symbolic link to nothing ({os.readlink(path)})")
                if path.suffix.lower() not in IMAGE_EXTENSIONS:
                    raise CostfilterError(f"{rel}: not an image file (expected {', '.join(IMAGE_EXTENSIONS)})")
                data = path.read_bytes()
                if not looks_complete(data):
                    age = time.time() - path.stat().st_mtime
                    if age < self.cfg.incomplete_timeout_s:
                        if path not in self.waiting:
                            self.waiting.add(path)
                            log.info("source %s: %s is not a whole image yet; waiting for its writer", self.name, rel)
                        continue
                    raise CostfilterError(f"{rel}: the image is incomplete (truncated) and has not changed for "
                                          f"{age:.0f} s (incomplete_timeout_s {self.cfg.incomplete_timeout_s:g})")
                key = self.key(path, data)
            except FileNotFoundError:
                continue  # taken away by someone else before we read it
            except (OSError, CostfilterError) as exc:
                self._failed(path, str(exc) if isinstance(exc, CostfilterError) else f"{rel}: {exc.strerror or exc}")
                continue
            self.waiting.discard(path)
            done_as = self.inspector.store.seen(key)
            if done_as:  # stored before a restart, not yet moved
                moved = self._move(path, self.cfg.done)
                log.info("source %s: %s was already inspected as %s before a restart; moved to %s", self.name, rel,
                         done_as, moved)
                continue
            kept.append(path)
            items.append(Item(str(rel), data, input_key=key, source=self.name))
        return items, kept

    def finish(self, paths: list[Path], scored: list[Any]) -> bool:
        """Store the scored batch and move each file on; False when the store refused (those
        files are left in place, to be tried again)."""
        stored_all = True
        try:
            for path, outcome in zip(paths, self.inspector.keep(scored)):
                if isinstance(outcome, Inspected):
                    self.inspected += 1
                    self._move(path, self.cfg.done)
                elif isinstance(outcome, StoreUnavailable):
                    stored_all = False
                    self.state, self.ok = f"waiting: results cannot be stored ({outcome})", False
                else:
                    self._failed(path, str(outcome))
        finally:
            self.inflight.difference_update(paths)
        if stored_all:
            self.state, self.ok = "watching", True
        return stored_all

    def _move(self, path: Path, to: Path | None) -> Path:
        assert to is not None
        return move_no_clobber(path, to / path.relative_to(self.cfg.path))

    def _failed(self, path: Path, reason: str) -> None:
        """Move ``path`` to ``failed/`` beside its reason, and tell every sink (the line's PLC
        must hear of that part too)."""
        self.failed += 1
        self.inspector.metrics.input_errors.labels(self.name).inc()
        moved: Path | None = None
        try:
            moved = self._move(path, self.cfg.failed)
            write_text(moved.with_name(moved.name + ".reason.txt"), reason + "\n")
            log.warning("source %s: %s (moved to %s)", self.name, reason, moved)
        except OSError as exc:
            log.error("source %s: %s; and it could not be moved (%s)", self.name, reason, exc.strerror or exc)
            self.seen.pop(path, None)
        self.inspector.report_error(str(path.relative_to(self.cfg.path)), reason, self.name,
                                    moved_to=str(moved) if moved else None)


class FolderEvents:
    """The kernel's close-write and moved-to events under a folder (inotify through watchdog),
    each of which calls ``wake``. Where none can be had (no watchdog, an inotify limit, a
    network share that sends none) the source lists the folder every ``poll_s`` as before."""

    def __init__(self, folder: Path, wake: Any):
        self.folder, self.wake = folder, wake
        self.observer: Any = None
        self.active = False

    def start(self) -> None:
        try:
            from watchdog.events import FileClosedEvent, FileMovedEvent, FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            log.info("no watchdog package: %s is listed every poll_s only", self.folder)
            return
        wake = self.wake

        class Handler(FileSystemEventHandler):  # type: ignore[misc]
            def on_any_event(self, event: Any) -> None:
                if isinstance(event, FileClosedEvent | FileMovedEvent):
                    wake()

        try:
            self.observer = Observer()
            self.observer.schedule(Handler(), str(self.folder), recursive=True)
            self.observer.daemon = True
            self.observer.start()
            self.active = True
        except OSError as exc:  # e.g. the inotify watch limit
            log.warning("no file events for %s (%s): listed every poll_s only", self.folder, exc.strerror or exc)
            self.observer = None

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
            self.observer = None


class StreamSource(_Source):
    kind = "stream"

    def __init__(self, cfg: c.StreamSource, inspector: Inspector):
        super().__init__(cfg.name, cfg.url, inspector)
        self.cfg = cfg
        self.device = int(cfg.url) if cfg.url.isdigit() else None
        self.is_file = self.device is None and "://" not in cfg.url
        self.reconnect = cfg.reconnect if cfg.reconnect is not None else not self.is_file
        self.frames = 0
        try:  # here, so `watch --check` says it before the station starts
            import cv2
        except ImportError:
            raise CostfilterError("stream sources need OpenCV: pip install 'costfilter[station]'") from None
        self.cv2 = cv2

    def run(self) -> None:
        cv2 = self.cv2
        backoff = 1.0
        last = 0.0
        while not self.stopping.is_set():
            self.beat()
            cap = cv2.VideoCapture(self.device if self.device is not None else self.cfg.url)
            if not cap.isOpened():
                cap.release()
                if not self.reconnect:
                    self.state, self.ok = f"cannot open {self.cfg.url}", False
                    return
                self.state, self.ok = f"reconnecting in {backoff:g} s (cannot open {self.cfg.url})", False
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, self.cfg.backoff_max_s)
                continue
            self.state, self.ok = "reading", True
            read = 0
            try:
                while not self.stopping.is_set():
                    got, frame = cap.read()
                    self.beat()
                    if not got:
                        break
                    read += 1
                    backoff = 1.0
                    if (read - 1) % self.cfg.every:
                        continue
                    now = time.monotonic()
                    if self.cfg.max_fps and now - last < 1.0 / self.cfg.max_fps:
                        continue
                    last = now
                    ok, png = cv2.imencode(".png", frame)
                    if not ok:
                        continue
                    self.frames += 1
                    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
                    outcome = self.inspector.inspect([Item(f"{self.name}/{stamp}-{self.frames:08d}.png",
                                                           png.tobytes(), source=self.name)])[0]
                    if isinstance(outcome, Inspected):
                        self.inspected += 1
                    else:  # a frame is not kept anywhere else: say so, and go on with the next
                        self.failed += 1
                        log.warning("source %s: frame %d not stored: %s", self.name, self.frames, outcome)
                        self.inspector.report_error(f"{self.name}/frame-{self.frames:08d}", str(outcome), self.name)
            finally:
                cap.release()
            if not self.reconnect:
                self.state = f"finished ({read} frames read)"
                return
            self.state, self.ok = f"reconnecting in {backoff:g} s (stream ended)", False
            self.stopping.wait(backoff)
            backoff = min(backoff * 2, self.cfg.backoff_max_s)
