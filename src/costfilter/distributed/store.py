"""A resumable results table: ``OUT/results.parquet``, one row per image.

Rows arrive from the cluster in any order. They are flushed every few hundred rows (or seconds)
to a part file in ``OUT/.parts/``, each written atomically, so a job killed at any moment keeps
everything up to its last flush. When the job ends, the earlier table and the parts are merged
into ``results.parquet`` (atomically again), the last row of an image winning, and the parts go.

A rerun into the same folder reads the table *and* any parts a killed job left, and skips every
image whose path and SHA-256 already have a scored row: a file replaced under the same name is
scored again, a failed image is retried.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import remove_stale_temps, write_with
from ..errors import CostfilterError
from ..sources import path_key

RESULTS = "results.parquet"
PARTS = ".parts"
RECORD = "run-record.json"
#: written when a results folder is first set up, so a folder whose driver was killed before its
#: first flush (no table, no parts yet) is still recognised as ours on the rerun
MARKER = ".costfilter-results"

#: The columns of ``results.jsonl`` (regions as JSON text) plus the file's and the model's
#: SHA-256 and an error message (rows of images that could not be scored).
SCHEMA = pa.schema([
    ("image", pa.string()),
    ("sha256", pa.string()),
    ("score", pa.float64()),
    ("decision", pa.string()),
    ("typical_score", pa.float64()),
    ("n_regions", pa.int64()),
    ("defect_area_pct", pa.float64()),
    ("overlay", pa.string()),
    ("mask", pa.string()),
    ("regions", pa.string()),
    ("model_sha256", pa.string()),
    ("error", pa.string()),
])
COLUMNS = tuple(SCHEMA.names)


def _read(path: Path, columns: list[str] | None = None) -> pa.Table:
    way_out = f"move it out of {path.parent} to keep the other results, or use --force to start over"
    try:
        missing = [c for c in SCHEMA.names if c not in pq.read_schema(path).names]
        if missing:
            raise CostfilterError(f"{path}: not a costfilter results table (no column {', '.join(missing[:3])}); "
                                  f"{way_out}")
        return pq.read_table(path, columns=columns, schema=SCHEMA)
    except CostfilterError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow's own error types
        raise CostfilterError(f"{path}: not a readable results table ({str(exc).splitlines()[0]}); "
                              f"{way_out}") from None


class ResultStore:
    """The results of one model in ``out``. ``force``: discard an earlier run's results there,
    whichever model made them (nothing else in the folder is touched). ``on_flush(store)`` is
    called after each part file is written."""

    def __init__(self, out: Path, model_sha256: str, *, force: bool = False, flush_rows: int = 256,
                 flush_s: float = 30.0, on_flush: Callable[[ResultStore], None] | None = None):
        self.out, self.model_sha256 = Path(out), model_sha256
        self.on_flush = on_flush
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self.pending: list[dict[str, Any]] = []
        self.last_flush = time.monotonic()
        self._prepare(force)

    @property
    def parts_dir(self) -> Path:
        return self.out / PARTS

    def _earlier_files(self) -> list[Path]:
        files = [self.out / RESULTS] if (self.out / RESULTS).is_file() else []
        if self.parts_dir.is_dir():
            files += sorted(p for p in self.parts_dir.iterdir()
                            if p.suffix == ".parquet" and not p.name.startswith("."))  # ".x.tmp": a cut-short write
        return files

    def _prepare(self, force: bool) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise CostfilterError(f"{out}: exists and is not a folder")
        earlier = self._earlier_files()
        if force:
            (out / RESULTS).unlink(missing_ok=True)
            shutil.rmtree(self.parts_dir, ignore_errors=True)
        elif earlier:
            # one column is enough here; done() reads the rows once the folder is accepted
            models = {m for f in earlier for m in _read(f, ["model_sha256"])["model_sha256"].to_pylist()}
            others = sorted(str(m)[:12] for m in models - {self.model_sha256})
            if others:
                raise CostfilterError(f"{out}: holds results of another model (sha256 {others[0]}…); "
                                      "use another --out, or --force to start over")
        elif out.is_dir() and not (out / MARKER).is_file() and any(out.iterdir()):
            raise CostfilterError(f"{out}: folder is not empty and holds no earlier results "
                                  "(use --force to write into it)")
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        (out / MARKER).touch()
        remove_stale_temps(out, whole_folder=True)  # pictures a killed actor was writing
        remove_stale_temps(self.parts_dir, whole_folder=True)

    def table(self) -> pa.Table:
        """Every row so far (earlier table and parts), the last row of each image kept."""
        tables = [_read(f) for f in self._earlier_files()]
        if not tables:
            return SCHEMA.empty_table()
        table = pa.concat_tables(tables)
        # One row per file however its path was spelled in each run (relative, absolute, a link).
        last = {path_key(image): i for i, image in enumerate(table["image"].to_pylist())}
        return table.take(sorted(last.values()))

    def done(self) -> dict[str, str]:
        """``resolved path → sha256`` of every image already scored without error (see
        :func:`~costfilter.sources.path_key`)."""
        t = self.table()
        return {path_key(i): s for i, s, e in zip(t["image"].to_pylist(), t["sha256"].to_pylist(),
                                                  t["error"].to_pylist())
                if e is None and s is not None}

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        """Queue rows; flush when enough rows or seconds have gathered."""
        self.pending += rows
        if len(self.pending) >= self.flush_rows or time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Write the queued rows as one part file (atomically)."""
        self.last_flush = time.monotonic()
        if not self.pending:
            return
        table = pa.Table.from_pylist([{k: r.get(k) for k in COLUMNS} for r in self.pending], schema=SCHEMA)
        name = f"part-{time.time_ns():020d}-{os.getpid()}.parquet"
        write_with(self.parts_dir / name, lambda tmp: pq.write_table(table, tmp))
        self.pending = []
        if self.on_flush is not None:
            self.on_flush(self)

    def finish(self) -> pa.Table:
        """Merge everything into ``results.parquet``, remove the parts; returns the table."""
        self.flush()
        table = self.table()
        write_with(self.out / RESULTS, lambda tmp: pq.write_table(table, tmp))
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        return table


def regions_of(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A row's regions (stored as JSON text) as the list ``results.jsonl`` holds."""
    return json.loads(row["regions"]) if row.get("regions") else []
