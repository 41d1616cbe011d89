"""Snapshots: the view's winning registers and cursors as of one log position.

A snapshot file uses the log's framing: a file header, a ``SNAPSHOT_HEAD`` record (the log
position it covers and the log's counters there), checkpoint-less ``BATCH`` records of the
winning events, ``CHECKPOINT`` records, and a ``SNAPSHOT_END`` record with the totals. A file
without a whole end record, or with any bad record, is damaged and is never half-used.

The checkpoints include the view's compaction state (the pseudo-source ``STATE_SOURCE`` of
``_horizon``: floors and version marks), so a replay that starts from a snapshot applies
the same floors as one that reads the compacted generation from its start.

Snapshots only speed up start-up: the log segments are kept until compaction replaces them
with their own compacted form, so deleting every snapshot is always safe.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from .._errors import StorageError
from .._event import Event
from .._logport import Checkpoint
from ._frame import (
    FILE_HEADER_SIZE,
    SNAPSHOT_MAGIC,
    EventTuple,
    FileHeader,
    RecordType,
    check_file_header,
    cursor_pair,
    decode_cursor,
    event_tuple,
    file_header,
    frame,
    pack,
    unpack,
)
from ._recovery import Outcome, scan_records
from ._segment import write_atomic

#: Events per BATCH record inside a snapshot or a compacted log.
CHUNK_EVENTS = 1000


class SnapshotDamaged(StorageError):
    """A snapshot file is unusable (truncated, damaged, or from a newer format)."""


@attrs.frozen
class Counters:
    """Totals of the log (all segments of the live generation) up to some position."""

    records: int = 0
    batches: int = 0
    events: int = 0


@attrs.frozen
class Snapshot:
    generation: int
    segment: int
    offset: int
    counters: Counters
    events: list[EventTuple]
    checkpoints: dict[str, Any]


def event_frames(events: Iterable[Event]) -> Iterable[bytes]:
    """Checkpoint-less BATCH frames of ``events``, ``CHUNK_EVENTS`` per record."""
    chunk: list[list[Any]] = []
    for event in events:
        chunk.append(event_tuple(event))
        if len(chunk) == CHUNK_EVENTS:
            yield frame(RecordType.BATCH, pack([chunk, None]))
            chunk = []
    if chunk:
        yield frame(RecordType.BATCH, pack([chunk, None]))


def checkpoint_frames(checkpoints: Mapping[str, Any]) -> Iterable[bytes]:
    for source, cursor in sorted(checkpoints.items()):
        yield frame(RecordType.CHECKPOINT, pack(cursor_pair(Checkpoint(source, cursor))))


def encode_snapshot(generation: int, segment: int, offset: int, counters: Counters,
                    events: list[Event], checkpoints: Mapping[str, Any]) -> bytes:
    head = [generation, segment, offset, [counters.records, counters.batches, counters.events]]
    parts = [file_header(SNAPSHOT_MAGIC), frame(RecordType.SNAPSHOT_HEAD, pack(head))]
    parts.extend(event_frames(events))
    parts.extend(checkpoint_frames(checkpoints))
    parts.append(frame(RecordType.SNAPSHOT_END, pack([len(events), len(checkpoints)])))
    return b"".join(parts)


def write_snapshot(path: Path, data: bytes, *, fsync: bool) -> None:
    write_atomic(path, data, fsync=fsync)


def decode_snapshot(buf: bytes, name: str, max_record: int) -> Snapshot:
    """Parse a whole snapshot or raise ``SnapshotDamaged`` saying why."""
    header, version = check_file_header(buf, SNAPSHOT_MAGIC)
    if header is FileHeader.FUTURE:
        raise SnapshotDamaged(f"snapshot {name} has format version {version}, newer than "
                              f"this build reads")
    if header is not FileHeader.OK:
        raise SnapshotDamaged(f"snapshot {name}: {header.value}")
    scan = scan_records(buf, FILE_HEADER_SIZE, last_segment=False, max_record=max_record)
    if scan.outcome is not Outcome.ACCEPT:
        raise SnapshotDamaged(f"snapshot {name} is damaged or truncated: {scan.detail}")
    records = scan.records
    if (len(records) < 2 or records[0][1] != RecordType.SNAPSHOT_HEAD
            or records[-1][1] != RecordType.SNAPSHOT_END):
        raise SnapshotDamaged(f"snapshot {name} is truncated (no end record after "
                              f"{len(buf)} bytes)")
    try:
        generation, segment, offset, counts = unpack(records[0][2])
        events: list[EventTuple] = []
        checkpoints: dict[str, Any] = {}
        for _, rtype, payload in records[1:-1]:
            if rtype == RecordType.BATCH:
                events.extend(unpack(payload)[0])
            elif rtype == RecordType.CHECKPOINT:
                source, cursor = decode_cursor(unpack(payload))
                checkpoints[source] = cursor
        n_events, n_checkpoints = unpack(records[-1][2])
    except (ValueError, TypeError) as exc:
        raise SnapshotDamaged(f"snapshot {name} has an unreadable record: {exc}")
    if (n_events, n_checkpoints) != (len(events), len(checkpoints)):
        raise SnapshotDamaged(f"snapshot {name} is inconsistent: end record says {n_events} "
                              f"events, {n_checkpoints} checkpoints; found {len(events)}, "
                              f"{len(checkpoints)}")
    return Snapshot(generation, segment, offset, Counters(*counts), events, checkpoints)


def load_snapshot(path: Path, max_record: int) -> Snapshot:
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise SnapshotDamaged(f"snapshot {path.name} unreadable: {exc.strerror}")
    return decode_snapshot(buf, path.name, max_record)
