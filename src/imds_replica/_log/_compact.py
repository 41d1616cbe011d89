"""Compaction: rewrite the log as its winners and latest cursors, as a new generation.

Steps, and what a crash after each leaves:

1. write every segment of generation G+1 (checkpoints first, then the winners in chunks;
   one group per segment, under a fresh salt), fdatasync each, fsync the directory —
   crash: the marker still names G; G+1's files are leftovers that the next open deletes.
   The old log is intact.
2. replace the marker atomically (temp, fsync, rename, fsync dir) to name G+1 — the single
   switch point: before the rename the log is G, after it G+1, both complete. The marker
   records G+1's salt and where its compacted part ends (``sealed``): that part was
   durable before it became live, so damage in it is never read as a torn write.
3. delete G's segments and snapshots — crash: they are leftovers, deleted on next open.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from .._event import Event
from ._frame import FILE_HEADER_SIZE, GROUP_SIZE, SEGMENT_MAGIC, file_header, group_header
from ._segment import (
    Meta,
    fsync_dir,
    list_directory,
    new_salt,
    segment_name,
    write_all,
    write_meta,
)
from ._snapshot import Counters, checkpoint_frames, event_frames


@attrs.frozen
class CompactionResult:
    generation: int  # the new live generation
    bytes_before: int
    bytes_after: int
    registers: int  # events kept (winners, tombstones younger than the horizon included)
    tombstones_dropped: int
    checkpoints: int


@attrs.frozen
class Written:
    segments: int  # last sequence number written (they are 1..segments)
    end: int  # size of the last segment
    bytes: int
    counters: Counters
    salt: int = 0  # the new generation's group salt


def write_generation(directory: Path, generation: int, events: list[Event],
                     checkpoints: Mapping[str, Any], *, segment_bytes: int,
                     fsync: bool, salt: int | None = None) -> Written:
    """Step 1: the complete new generation on disk, durable, not yet live."""
    seq, total, records, size = 1, 0, 0, 0
    fd = -1
    salt = new_salt() if salt is None else salt

    def flush(target: int, pending: list[bytes]) -> None:
        # Each segment's records go out as one group, like one group commit.
        if pending:
            body = b"".join(pending)
            write_all(target, group_header(salt, seq, FILE_HEADER_SIZE, len(body),
                                           len(pending)) + body)

    def open_next() -> int:
        nonlocal size
        path = directory / segment_name(generation, seq)
        new = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(new, file_header(SEGMENT_MAGIC))
        size = FILE_HEADER_SIZE
        return new

    def close(old: int) -> None:
        if fsync:
            os.fdatasync(old)
        os.close(old)

    fd = open_next()
    try:
        frames = [*checkpoint_frames(checkpoints), *event_frames(events)]
        pending: list[bytes] = []
        for data in frames:
            if size + len(data) > segment_bytes and size > FILE_HEADER_SIZE:
                flush(fd, pending)
                pending = []
                total += size
                close(fd)
                seq += 1
                fd = open_next()
            if not pending:
                size += GROUP_SIZE
            pending.append(data)
            size += len(data)
            records += 1
        flush(fd, pending)
    finally:
        close(fd)
    total += size
    if fsync:
        fsync_dir(directory)
    return Written(seq, size, total, Counters(records, records - len(checkpoints), len(events)),
                   salt)


def switch_generation(directory: Path, old: int, new: int, *, fsync: bool,
                      written: Written | None = None) -> None:
    """Steps 2 and 3: make ``new`` live, then delete ``old``'s files."""
    sealed = (0, 0) if written is None else (written.segments, written.end)
    write_meta(directory, Meta(new, salt=0 if written is None else written.salt,
                               sealed=sealed), fsync=fsync)
    listing = list_directory(directory, old)
    for seq in listing.segments:
        os.unlink(directory / segment_name(old, seq))
    for _, _, name in listing.snapshots:
        os.unlink(directory / name)
    if fsync:
        fsync_dir(directory)


def compact_directory(directory: Path, generation: int, bytes_before: int,
                      events: list[Event], checkpoints: Mapping[str, Any],
                      tombstones_dropped: int, *, segment_bytes: int,
                      fsync: bool) -> tuple[CompactionResult, Written]:
    written = write_generation(directory, generation + 1, events, checkpoints,
                               segment_bytes=segment_bytes, fsync=fsync)
    switch_generation(directory, generation, generation + 1, fsync=fsync, written=written)
    return CompactionResult(generation + 1, bytes_before, written.bytes, len(events),
                            tombstones_dropped, len(checkpoints)), written
