"""The cold path: every line kept locally, rotated by size into gzip files, pruned by count
and age; and the filtered read behind ``GET /logs``.

Rotation is the standard library's ``RotatingFileHandler`` with its ``namer``/``rotator``
hooks doing the compression (the pattern the logging cookbook gives), so ``imds.log`` is
the live file and ``imds.log.1.gz`` the newest compressed one; ``backupCount`` bounds their
number and ``prune`` deletes those older than the age limit.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import logging.handlers
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import IO, Any, cast

import attrs
import re2
from isal import igzip

from imds_replica import ClientError

from ._config import ColdConfig
from ._jsonlog import iso_time, split_lines

LOG_NAME = "imds.log"
_BACKUP_RE = re.compile(r"\.(\d+)\.gz$")
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


#: Lines joined per write (``ColdFileHandler._write_slices``): ~56 KiB of access lines,
#: and at most about that many bytes (items may be chunks of lines).
WRITE_SLICE = 128
WRITE_SLICE_BYTES = 56 * 1024

#: Why retention deleted a compressed file: there were ``max_files`` newer ones, or it
#: was older than ``max_age_seconds``.
EXPIRED_REASONS = ("max-files", "max-age")
log = logging.getLogger("imds_server.telemetry")


class ColdFileHandler(logging.handlers.RotatingFileHandler):
    """Writes pre-rendered lines; errors are counted and reported, never raised.

    ``write_lines`` writes a batch of rendered lines with one write, rolling over (the
    stdlib's ``doRollover``, with gzip ``namer``/``rotator``) where a line would pass
    ``max_file_bytes``. Lines are ASCII (the renderer escapes the rest), so characters count
    bytes. ``emit`` (a plain logging handler's entry) writes one line the same way.

    Retention deletes files, and so lines: by count at rollover (``max_files``), by age in
    ``prune``. Neither is silent: ``on_expired(reason, files, lines)`` is called and a line
    is logged for each file. Each compressed file carries its line count in its gzip header
    (the original-name field, ``imds.log.lines-N``), so the lines of a file written before
    a restart are known too.
    """

    def __init__(self, log_dir: Path, config: ColdConfig, *,
                 on_error: Callable[[str], None] | None = None,
                 on_lost: Callable[[int], None] | None = None,
                 on_expired: Callable[[str, int, int], None] | None = None) -> None:
        super().__init__(log_dir / LOG_NAME, maxBytes=config.max_file_bytes,
                         backupCount=config.max_files, encoding="utf-8", delay=True)
        self.max_age = config.max_age_seconds
        self.namer = _gz_name
        self.rotator = self._rotate
        self._on_error = on_error
        self._on_lost = on_lost
        self._on_expired = on_expired
        self._last_report = 0.0
        self.failed_lines = 0
        #: Lines in the live file (counted at its first open, then as they are written).
        self.live_lines = 0
        #: (reason, files, lines) deleted by retention since this handler was made.
        self.expired: dict[str, tuple[int, int]] = {}

    def _open(self) -> Any:
        stream = super()._open()
        self.live_lines = _count_lines(self.baseFilename) if stream.tell() else 0
        return stream

    def emit(self, record: logging.LogRecord) -> None:
        self.write_lines([self.format(record) + "\n"])

    def write_lines(self, lines: list[str], count: int | None = None) -> None:
        """``lines`` each end with a newline; an item may hold several lines (a chunk the
        loop rendered in one go): ``count`` says how many in all (None: one per item)."""
        with self.lock:  # type: ignore[union-attr]
            try:
                self._write(lines, len(lines) if count is None else count)
            except Exception:
                self._failed(len(lines) if count is None else count)

    def _write(self, lines: list[str], count: int) -> None:
        self.stream = self.stream or self._open()  # None after an error or at start
        position = self.stream.tell()
        if position + sum(map(len, lines)) < self.maxBytes:  # the usual batch: no rollover
            self._write_slices(lines, 0, len(lines))
            self.stream.flush()
            self.live_lines += count
            return
        if count != len(lines):  # a rollover falls between two lines, not two chunks
            lines = [line for item in lines for line in split_lines(item)]
        start = 0
        for i, line in enumerate(lines):
            if position and position + len(line) >= self.maxBytes:
                self._write_slices(lines, start, i)
                self.live_lines += i - start
                self.doRollover()  # closes the stream; with delay=True, reopens none
                self.stream = self.stream or self._open()
                start, position = i, 0
            position += len(line)
        self._write_slices(lines, start, len(lines))
        self.stream.flush()
        self.live_lines += len(lines) - start

    def _write_slices(self, lines: list[str], start: int, end: int) -> None:
        # A few dozen KiB per write rather than the batch at once: a batch of 8,192 lines
        # is 3.5 MiB, and its text and then its encoding, each a fresh allocation of that
        # size, were page-faulted in anew every time (glibc returns such blocks to the
        # kernel): that cost 3-5 times the write itself. Slices are reused from the heap.
        # A chunk of lines (~14 KiB) is written as it is, with its neighbours up to a slice.
        assert self.stream is not None
        write = self.stream.write
        i = start
        while i < end:
            j, size = i, 0
            while j < end and (j - i < WRITE_SLICE and size < WRITE_SLICE_BYTES):
                size += len(lines[j])
                j += 1
            write(lines[i] if j == i + 1 else "".join(lines[i:j]))
            i = j

    def doRollover(self) -> None:
        # The stdlib's rollover shifts .1.gz ... and deletes the oldest, .<max_files>.gz,
        # when every slot is taken: say so (its lines are gone) before it does.
        n = self.backupCount
        oldest = Path(self.rotation_filename(f"{self.baseFilename}.{n}"))
        if n > 0 and oldest.exists() and (
                n == 1 or Path(self.rotation_filename(f"{self.baseFilename}.{n - 1}")).exists()):
            self._expire(oldest, "max-files", delete=False)
        super().doRollover()
        self._prune_locked(time.time())

    def _rotate(self, source: str, dest: str) -> None:
        _gzip_rotate(source, dest, self.live_lines)
        self.live_lines = 0

    def _expire(self, path: Path, reason: str, *, delete: bool = True) -> None:
        lines = gz_line_count(path)
        if delete:
            path.unlink()
        files, total = self.expired.get(reason, (0, 0))
        self.expired[reason] = (files + 1, total + (lines or 0))
        if self._on_expired is not None:
            self._on_expired(reason, 1, lines or 0)
        limit = (f"telemetry.cold.max_files = {self.backupCount}" if reason == "max-files"
                 else f"telemetry.cold.max_age_seconds = {self.max_age:g}")
        log.warning("log retention deleted %s (%s lines) to keep %s",
                    path.name, "unknown" if lines is None else lines, limit,
                    extra={"fields": {"file": path.name, "lines": lines, "reason": reason}})

    def prune(self, now: float | None = None) -> int:
        """Delete compressed files older than the age limit; returns how many."""
        with self.lock:  # type: ignore[union-attr]
            return self._prune_locked(time.time() if now is None else now)

    def _prune_locked(self, now: float) -> int:
        removed = 0
        for path in backup_files(Path(self.baseFilename)):
            try:
                if path.stat().st_mtime < now - self.max_age:
                    self._expire(path, "max-age")
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def handleError(self, record: logging.LogRecord) -> None:
        self._failed(1)

    def _failed(self, lines: int) -> None:
        # A full disk or an unwritable directory must not take the server down, nor print a
        # traceback per line: count every loss, say so on stderr at most every 10 s.
        self.failed_lines += lines
        if self._on_lost is not None:
            self._on_lost(lines)
        error = sys.exc_info()[1]
        if self.stream is not None and error is not None:
            try:
                self.stream.close()
            except OSError:
                pass
            self.stream = None  # reopened by the next line's emit
        if self._on_error is not None:
            self._on_error("cold")
        now = time.monotonic()
        if now - self._last_report >= 10.0:
            self._last_report = now
            print(f"imds-server: cannot write log {self.baseFilename}: {error!r} "
                  f"({self.failed_lines} failed lines so far)", file=sys.stderr, flush=True)


def _gz_name(name: str) -> str:
    return name + ".gz"


#: Rotated files are ordinary gzip (RFC 1952: ``zcat``, ``gzip.open`` and ``GET /logs``
#: read them as before), compressed with ISA-L's deflate (python-isal) rather than zlib's.
#: Every line is compressed once, at rotation, on the writer thread, and on JSON access
#: lines that was the largest part of telemetry's cost after the line itself: zlib at
#: level 3 took ~1.0 µs a line for a 34x ratio, ISA-L at level 1 takes ~0.15 µs for 39x
#: (bench/bench_telemetry.py measures both on the same lines).
GZIP_LEVEL = 1


#: The gzip header's original-name field of a rotated file: its line count (what
#: retention reports when it deletes the file). ``gunzip`` ignores it unless asked (-N).
_LINES_NAME = "imds.log.lines-{}"
_LINES_RE = re.compile(rb"imds\.log\.lines-(\d+)\x00")


def _gzip_rotate(source: str, dest: str, lines: int | None = None) -> None:
    name = _LINES_NAME.format(lines) if lines is not None else "imds.log"
    with open(source, "rb") as src, open(dest + ".tmp", "wb") as raw, \
            _gzip_writer(name + ".gz", raw) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(dest + ".tmp", dest)
    os.remove(source)


def _gzip_writer(name: str, raw: IO[bytes]) -> IO[bytes]:
    """A gzip stream (header name ``name``) into ``raw``, compressed by ISA-L."""
    return cast(IO[bytes], igzip.GzipFile(  # type: ignore[no-untyped-call]
        name, "wb", GZIP_LEVEL, raw))


def gz_line_count(path: Path) -> int | None:
    """The line count a rotated file's gzip header carries (None: not ours, or older)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    # flags bit 3 (FNAME): the zero-terminated name follows the 10-byte header
    if len(head) < 10 or head[:2] != b"\x1f\x8b" or not head[3] & 0x08:
        return None
    found = _LINES_RE.match(head, 10)
    return int(found.group(1)) if found else None


def _count_lines(path: str) -> int:
    """Lines already in a live file this process did not write (a restart)."""
    count = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                count += chunk.count(b"\n")
    except OSError:
        pass
    return count


def backup_files(base: Path) -> list[Path]:
    """Compressed files of ``base``, oldest first (highest index first)."""
    found = []
    for path in base.parent.glob(base.name + ".*.gz"):
        match = _BACKUP_RE.search(path.name)
        if match and path.name == f"{base.name}.{match.group(1)}.gz":
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found, reverse=True)]


def log_files(log_dir: Path) -> list[Path]:
    """Every local log file, oldest first: compressed ones, then the live one."""
    base = log_dir / LOG_NAME
    return [*backup_files(base), *([base] if base.exists() else [])]


@attrs.frozen
class LogFilter:
    """The filters of ``GET /logs`` and ``logs fetch`` (times compare as ISO strings)."""

    since: str | None = None  # ISO-8601 UTC, as the lines carry it
    until: str | None = None
    level: int | None = None
    #: RE2 (linear time: a guest can plant the lines a pattern runs over; a backtracking
    #: engine let 26 planted characters stall the process for seconds, doubling per one).
    grep: re2._Regexp | None = None
    limit: int | None = None

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> LogFilter:
        """Parse query parameters; a bad one raises ``ClientError`` (answered 400)."""
        unknown = set(params) - {"since", "until", "level", "grep", "limit"}
        if unknown:
            raise ClientError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        level = params.get("level")
        if level is not None and level.lower() not in LEVELS:
            raise ClientError(f"level: must be one of {', '.join(LEVELS)}")
        grep = params.get("grep")
        pattern = _compile_grep(grep) if grep else None
        limit = params.get("limit")
        if limit is not None and not (limit.isascii() and limit.isdigit() and int(limit) > 0):
            raise ClientError("limit: must be a positive integer")
        return cls(since=_parse_time(params.get("since"), "since"),
                   until=_parse_time(params.get("until"), "until"),
                   level=LEVELS[level.lower()] if level else None, grep=pattern,
                   limit=int(limit) if limit else None)

    def matches(self, line: str) -> bool:
        if self.grep is not None and self.grep.search(line) is None:
            return False
        if self.since is None and self.until is None and self.level is None:
            return True
        try:
            doc = json.loads(line)
            stamp = doc["time"]
        except (ValueError, KeyError, TypeError):
            return False  # not one of our lines: only unfiltered reads return it
        if self.since is not None and stamp < self.since:
            return False
        if self.until is not None and stamp >= self.until:
            return False
        return self.level is None or LEVELS.get(str(doc.get("level")), 0) >= self.level


def _compile_grep(text: str) -> re2._Regexp:
    """RE2 syntax: Python's, less what needs backtracking (backreferences, lookaround)."""
    options = re2.Options()
    options.log_errors = False  # the reason goes to the client, not to stderr
    try:
        return re2.compile(text, options)
    except re2.error as error:
        reason = error.args[0] if error.args else error
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ClientError(f"grep: bad regular expression (RE2 syntax: no backreferences "
                          f"or lookaround): {reason}")


def _parse_time(value: str | None, name: str) -> str | None:
    """ISO-8601 (any offset) or unix seconds → the lines' fixed UTC format."""
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        from datetime import UTC, datetime

        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ClientError(f"{name}: not an ISO-8601 time or unix seconds: {value!r}")
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        seconds = parsed.timestamp()
    try:
        return iso_time(seconds)
    except (ValueError, OverflowError, OSError):  # nan, inf, beyond the platform's time_t
        raise ClientError(f"{name}: not a representable time: {value!r}") from None


def read_lines(log_dir: Path, flt: LogFilter, *,
               stop: Callable[[], bool] | None = None) -> Generator[str, None, None]:
    """Matching lines (with newline), oldest first, at most ``flt.limit``; ends early once
    ``stop()`` is true (asked every few hundred lines: the client went away).

    Every file is opened before reading starts: an open file survives a concurrent
    rotation's renames, so no line is skipped or read twice while the writer rotates.
    """
    since_epoch = _epoch(flt.since)
    with contextlib.ExitStack() as stack:
        handles: list[tuple[Path, IO[str]]] = []
        for path in log_files(log_dir):
            try:
                if since_epoch is not None and path.stat().st_mtime < since_epoch:
                    continue  # everything in it was written before ``since``
                handles.append((path, stack.enter_context(_open_log(path))))
            except FileNotFoundError:
                continue  # pruned meanwhile
        sent = 0
        scanned = 0
        for path, handle in handles:
            try:
                for line in handle:
                    scanned += 1
                    if stop is not None and not scanned & 255 and stop():
                        return
                    if not line.endswith("\n"):
                        continue  # a line being written right now; it is not whole yet
                    if flt.matches(line):
                        yield line
                        sent += 1
                        if flt.limit is not None and sent >= flt.limit:
                            return
            except (OSError, EOFError) as error:  # a damaged gzip: say so in the stream
                yield json.dumps({"time": iso_time(time.time()), "level": "error",
                                  "logger": "imds_server.telemetry",
                                  "message": f"unreadable log file {path}: {error}"}) + "\n"


def _open_log(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _epoch(stamp: str | None) -> float | None:
    if stamp is None:
        return None
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
