"""The warm path's on-disk spool: sealed batches waiting for the collector.

One file per batch, named ``<batch id>~<lines>~<cluster>~<machine>.jsonl.gz`` and written
by rename after fsync, so a file either is a whole batch with its labels or does not exist;
it survives restarts and outages. The batch id is ``<unix ns>-<16 hex>``: it orders the
spool (oldest first), dates the batch for the collector's partitions, and makes a retried
upload idempotent. The spool is bounded in bytes; adding past the bound deletes the oldest
batches, and every such drop is counted. A file that is not a valid batch is moved to
``corrupt/``, never deleted.
"""

from __future__ import annotations

import gzip
import os
import re
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

BATCH_ID_RE = re.compile(r"^\d{20}-[0-9a-f]{16}$")
_FILE_RE = re.compile(
    r"^(?P<id>\d{20}-[0-9a-f]{16})~(?P<lines>\d+)~(?P<cluster>[A-Za-z0-9._-]+)"
    r"~(?P<machine>[A-Za-z0-9._-]+)\.jsonl\.gz$")


class CorruptBatch(Exception):
    """A spool file that is not a whole batch (moved to ``corrupt/``)."""


@attrs.frozen
class SpooledBatch:
    path: Path
    batch_id: str
    lines: int
    cluster: str
    machine: str
    size: int


@attrs.frozen
class SpoolStatistics:
    batches: int
    bytes: int
    dropped_batches: int
    dropped_lines: int
    quarantined: int


def new_batch_id(now_ns: int | None = None) -> str:
    return f"{now_ns if now_ns is not None else time.time_ns():020d}-{secrets.token_hex(8)}"


def batch_date(batch_id: str) -> str:
    """The UTC date of a batch id (the collector's ``date=`` partition)."""
    return time.strftime("%Y-%m-%d", time.gmtime(int(batch_id[:20]) / 1e9))


class Spool:
    def __init__(self, directory: Path, max_bytes: int, *,
                 on_drop: Callable[[SpooledBatch], None] | None = None,
                 on_quarantine: Callable[[str], None] | None = None) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._on_drop = on_drop
        self._on_quarantine = on_quarantine
        self._lock = threading.Lock()  # add/drop from the writer thread, done from uploads
        self.dropped_batches = 0
        self.dropped_lines = 0
        self.quarantined = 0

    def add(self, lines: Sequence[str], *, cluster: str, machine: str) -> SpooledBatch:
        """Seal ``lines`` into a durable batch file; raises ``OSError`` (disk full, ...)."""
        batch_id = new_batch_id()
        body = gzip.compress("".join(line + "\n" for line in lines).encode(), compresslevel=6,
                             mtime=0)
        name = f"{batch_id}~{len(lines)}~{cluster}~{machine}.jsonl.gz"
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / name
        tmp = self.directory / (name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.directory)
        batch = SpooledBatch(path, batch_id, len(lines), cluster, machine, len(body))
        self._enforce_bound(keep=batch)
        return batch

    def _enforce_bound(self, keep: SpooledBatch) -> None:
        with self._lock:
            batches = self._scan()
            total = sum(b.size for b in batches)
            for batch in batches:  # oldest first
                if total <= self.max_bytes or batch.path == keep.path:
                    break
                try:
                    batch.path.unlink()
                except FileNotFoundError:
                    continue
                total -= batch.size
                self.dropped_batches += 1
                self.dropped_lines += batch.lines
                if self._on_drop is not None:
                    self._on_drop(batch)

    def pending(self) -> list[SpooledBatch]:
        """Batches waiting, oldest first; stray files are quarantined on the way."""
        with self._lock:
            return self._scan()

    def _scan(self) -> list[SpooledBatch]:
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            if not entry.is_file():
                continue
            match = _FILE_RE.match(entry.name)
            if match is None:
                if entry.name.endswith(".tmp"):
                    # A seal interrupted by a crash: never acknowledged to anyone, incomplete.
                    Path(entry.path).unlink(missing_ok=True)
                else:
                    self._quarantine(Path(entry.path), "unknown-file")
                continue
            try:
                size = entry.stat().st_size
            except FileNotFoundError:
                continue
            found.append(SpooledBatch(Path(entry.path), match["id"], int(match["lines"]),
                                      match["cluster"], match["machine"], size))
        found.sort(key=lambda b: b.batch_id)
        return found

    def read(self, batch: SpooledBatch) -> bytes:
        """The batch's gzip body, verified whole (CRC and length); ``CorruptBatch`` if not
        (the file is moved to ``corrupt/``); ``FileNotFoundError`` if it was dropped."""
        body = batch.path.read_bytes()
        try:
            gzip.decompress(body)
        except (OSError, EOFError, zlib.error) as error:
            with self._lock:
                self._quarantine(batch.path, "corrupt")
            raise CorruptBatch(f"{batch.path.name}: {error}") from None
        return body

    def done(self, batch: SpooledBatch) -> None:
        """The collector has it: forget it."""
        with self._lock:
            batch.path.unlink(missing_ok=True)

    def reject(self, batch: SpooledBatch, reason: str) -> None:
        """The collector refuses it for good: keep it aside for a human."""
        with self._lock:
            self._quarantine(batch.path, reason)

    def _quarantine(self, path: Path, reason: str) -> None:
        where = self.directory / "corrupt"
        try:
            where.mkdir(exist_ok=True)
            os.replace(path, where / path.name)
        except FileNotFoundError:
            return
        self.quarantined += 1
        if self._on_quarantine is not None:
            self._on_quarantine(reason)

    def statistics(self) -> SpoolStatistics:
        batches = self.pending()
        return SpoolStatistics(len(batches), sum(b.size for b in batches),
                               self.dropped_batches, self.dropped_lines, self.quarantined)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
