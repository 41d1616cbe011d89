"""The data directory: its marker file, file names, locking, and the segment writer.

Layout of a log directory::

    imds-log.json                 marker: {"format": "imds-replica-log", "version": 2,
                                  "generation": G, "salt": S, "sealed": [segment, offset]};
                                  replaced atomically by compaction and by the upgrade
    LOCK                          flock()ed by the one process writing the log
    GGGGGGGG-SSSSSSSS.seg         segment S of generation G (only generation G is live)
    GGGGGGGG-SSSSSSSS-OOOOOOOOOOOO.snap   snapshot of the view up to segment S, offset O
    *.tmp                         unfinished atomic writes (removed on open)
    damaged/                      what ``repair`` moved aside (never read, never deleted)

Files of any other generation are leftovers of an interrupted compaction (newer: it never
switched; older: it switched but had not deleted them yet) and are removed on open.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import time
from pathlib import Path

import attrs

from .._errors import StorageError
from ._frame import (
    FILE_HEADER_SIZE,
    FORMAT_VERSION,
    READ_VERSIONS,
    SEGMENT_MAGIC,
    file_header,
    group_header,
)

META_NAME = "imds-log.json"
LOCK_NAME = "LOCK"
DAMAGED_DIR = "damaged"
FORMAT_NAME = "imds-replica-log"
SEGMENT_RE = re.compile(r"(\d{8})-(\d{8})\.seg\Z")
SNAPSHOT_RE = re.compile(r"(\d{8})-(\d{8})-(\d{12})\.snap\Z")


def segment_name(generation: int, seq: int) -> str:
    return f"{generation:08d}-{seq:08d}.seg"


def snapshot_name(generation: int, seq: int, offset: int) -> str:
    return f"{generation:08d}-{seq:08d}-{offset:012d}.snap"


def storage_error(what: str, exc: OSError) -> StorageError:
    """Map an OSError at the edge into our error tree, keeping the reason readable."""
    reason = exc.strerror or str(exc)
    return StorageError(f"{what}: {reason} (errno {exc.errno})")


def fsync_dir(directory: Path) -> None:
    _fsync_path(directory, os.O_RDONLY | os.O_DIRECTORY)


def fsync_file(path: Path) -> None:
    _fsync_path(path, os.O_RDONLY)


def _fsync_path(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FsyncError(OSError):
    """An fsync/fdatasync failed: Linux may have dropped the dirty pages (fsyncgate), so
    whatever they held is not known to be on disk and the fsync must not be retried."""


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a write may be partial)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_atomic(path: Path, data: bytes, *, fsync: bool) -> None:
    """Temp file, fsync, rename over ``path``, fsync the directory: old or new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent)


@attrs.frozen
class Meta:
    """The marker. ``salt`` keys the group headers of format 2 segments (0 in format 1);
    ``sealed`` is (segment, offset) up to which the generation was made durable before
    the marker named it: damage before it is never a torn write."""

    generation: int
    version: int = FORMAT_VERSION
    salt: int = 0
    sealed: tuple[int, int] = (0, 0)


def new_salt() -> int:
    return secrets.randbits(32) or 1


def versions_read() -> str:
    return " and ".join(str(v) for v in READ_VERSIONS)


def read_meta(directory: Path) -> Meta:
    """The directory's marker; a clear StorageError when it is missing, foreign or newer."""
    path = directory / META_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if directory.is_dir() and any(directory.iterdir()):
            raise StorageError(f"{directory} is not an imds-replica log directory (no "
                               f"{META_NAME}, and it is not empty); refusing to touch it")
        raise StorageError(f"{directory} holds no imds-replica log")
    except OSError as exc:
        raise storage_error(f"reading {path}", exc)
    try:
        doc = json.loads(raw)
        ours = isinstance(doc, dict) and doc.get("format") == FORMAT_NAME
    except ValueError:
        ours = False
    if not ours:
        raise StorageError(f"{path} is not an imds-replica log marker; refusing to use "
                           f"{directory}")
    version, generation = doc.get("version"), doc.get("generation")
    if type(version) is not int or type(generation) is not int or generation < 1:
        raise StorageError(f"{path} is damaged: {raw[:200]!r}")
    if version not in READ_VERSIONS:
        # Never touch a format we do not know: not a truncation, not a rewrite.
        raise StorageError(f"{directory} uses log format version {version}; this build of "
                           f"imds-replica reads version{'s' if len(READ_VERSIONS) > 1 else ''} "
                           f"{versions_read()} (upgrade it)")
    if version == 1:
        return Meta(generation, 1)
    salt, sealed = doc.get("salt"), doc.get("sealed")
    if type(salt) is not int or not (isinstance(sealed, list) and len(sealed) == 2
                                     and all(type(x) is int for x in sealed)):
        raise StorageError(f"{path} is damaged: {raw[:200]!r}")
    return Meta(generation, version, salt, (sealed[0], sealed[1]))


def write_meta(directory: Path, meta: Meta, *, fsync: bool) -> None:
    """Write the marker (always in the current format: a v1 marker is only ever read)."""
    doc = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "generation": meta.generation,
           "salt": meta.salt, "sealed": list(meta.sealed)}
    write_atomic(directory / META_NAME, json.dumps(doc).encode() + b"\n", fsync=fsync)


def _fresh(directory: Path) -> bool:
    """Nothing there but what a crash during ``init_directory`` can leave behind."""
    first = directory / segment_name(1, 1)
    leftovers = {LOCK_NAME, first.name, first.name + ".tmp", META_NAME + ".tmp"}
    return set(os.listdir(directory)) <= leftovers and (
        not first.exists() or first.stat().st_size <= FILE_HEADER_SIZE)


def ensure_ours(directory: Path) -> None:
    """Raise a clear StorageError unless ``directory`` is ours, fresh, or absent."""
    if (directory / META_NAME).exists() or (directory.exists() and not _fresh(directory)):
        read_meta(directory)


def init_directory(directory: Path, *, fsync: bool) -> Meta:
    """Read the marker, creating directory, marker and first segment when there is none."""
    ensure_ours(directory)
    if (directory / META_NAME).exists():
        return read_meta(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # The first segment exists before the marker, so a marked directory always has one.
    create_segment(directory, 1, 1, fsync=fsync)
    meta = Meta(1, salt=new_salt())
    write_meta(directory, meta, fsync=fsync)
    return meta


def lock_directory(directory: Path) -> int:
    """Hold an exclusive lock on the directory until the returned fd is closed."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(f"{directory} is in use by another process (it holds {LOCK_NAME})")
    return fd


@attrs.frozen
class Listing:
    segments: list[int]  # sequence numbers of the live generation, ascending
    snapshots: list[tuple[int, int, str]]  # (segment, offset, name), ascending
    leftovers: list[str]  # other generations' files and unfinished temp files


def list_directory(directory: Path, generation: int) -> Listing:
    segments, snapshots, leftovers = [], [], []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".tmp"):
            leftovers.append(name)
        elif m := SEGMENT_RE.match(name):
            if int(m[1]) == generation:
                segments.append(int(m[2]))
            else:
                leftovers.append(name)
        elif m := SNAPSHOT_RE.match(name):
            if int(m[1]) == generation:
                snapshots.append((int(m[2]), int(m[3]), name))
            else:
                leftovers.append(name)
    return Listing(segments, snapshots, leftovers)


def create_segment(directory: Path, generation: int, seq: int, *, fsync: bool) -> Path:
    path = directory / segment_name(generation, seq)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, file_header(SEGMENT_MAGIC))
        if fsync:
            os.fdatasync(fd)
    finally:
        os.close(fd)
    if fsync:
        fsync_dir(directory)
    return path


class SegmentWriter:
    """Appends groups to the live segment (format 2). Only the appender uses it, one call
    at a time."""

    def __init__(self, directory: Path, generation: int, seq: int, *, salt: int,
                 fsync: bool) -> None:
        self.directory = directory
        self.generation = generation
        self.seq = seq
        self.salt = salt
        self.fsync = fsync
        self.path = directory / segment_name(generation, seq)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.offset = os.fstat(self._fd).st_size

    def group(self, records: bytes, count: int) -> bytes:
        """``records`` (``count`` framed records) as the group that goes at ``offset``."""
        return group_header(self.salt, self.seq, self.offset, len(records), count) + records

    def write(self, data: bytes) -> float:
        """Write and fdatasync; returns the seconds fdatasync took. OSError propagates.

        A failed write leaves ``offset`` where the group began, so the caller can cut off
        what part of it reached the file (``truncate``) before trying again.
        """
        write_all(self._fd, data)
        self.offset += len(data)
        if not self.fsync:
            return 0.0
        started = time.perf_counter()
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise FsyncError(exc.errno, exc.strerror) from exc
        return time.perf_counter() - started

    def truncate(self) -> None:
        """Cut the file back to ``offset`` (a failed write's partial group), durably."""
        os.ftruncate(self._fd, self.offset)
        if self.fsync:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise FsyncError(exc.errno, exc.strerror) from exc

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def rotate(self) -> None:
        """Start the next segment (the current one is already durable). On failure the
        writer stays on the current segment and no half-made next one is left behind."""
        try:
            create_segment(self.directory, self.generation, self.seq + 1, fsync=self.fsync)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(self.directory / segment_name(self.generation, self.seq + 1))
            raise
        os.close(self._fd)
        self.seq += 1
        self.path = self.directory / segment_name(self.generation, self.seq)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.offset = FILE_HEADER_SIZE

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
