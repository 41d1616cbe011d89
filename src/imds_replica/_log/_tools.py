"""Offline maintenance of a log directory: verify, dump, stats, compact, repair.

All are blocking functions for the ``imds-replica log`` command. ``verify``, ``dump`` and
``stats`` only read; ``compact`` and ``repair`` take the directory's lock, so they refuse to
run while a replica has the log open.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs

from .._codec import decode as decode_value
from .._errors import CorruptLogError
from .._horizon import STATE_SOURCE, CompactionState, Horizons
from .._logport import split_checkpoints
from .._view import View
from ._compact import compact_directory
from ._frame import (
    DEFAULT_MAX_RECORD_BYTES,
    FILE_HEADER_SIZE,
    FORMAT_VERSION,
    SEGMENT_MAGIC,
    EventTuple,
    FileHeader,
    RecordType,
    check_file_header,
    frame,
    tuples_payload,
    unpack,
)
from ._recovery import (
    FrameState,
    Outcome,
    SegmentScan,
    check_group,
    find_group_header,
    find_whole_record,
    scan_groups,
    scan_records,
)
from ._replay import Reducer, recover_directory, unreadable_payload
from ._segment import (
    DAMAGED_DIR,
    Meta,
    SegmentWriter,
    create_segment,
    fsync_dir,
    fsync_file,
    list_directory,
    lock_directory,
    read_meta,
    segment_name,
    write_meta,
)
from ._snapshot import SnapshotDamaged, load_snapshot


@attrs.frozen
class VerifyReport:
    ok: bool  # False: corruption or damage somewhere (see ``problems``)
    problems: tuple[str, ...]
    notes: tuple[str, ...]  # e.g. a torn tail that the next open truncates
    segments: int
    records: int
    events: int
    bytes: int


def verify_log(directory: str | os.PathLike[str], *,
               max_record: int = DEFAULT_MAX_RECORD_BYTES) -> VerifyReport:
    """Check every segment from its first byte and every snapshot; never modifies."""
    path = Path(directory)
    problems: list[str] = []
    try:
        rec = recover_directory(path, writable=False, fsync=False, max_record=max_record,
                                use_snapshots=False)
    except CorruptLogError as exc:
        return VerifyReport(False, (exc.message,), (), 0, 0, 0, 0)
    notes = list(rec.notes)
    notes += [f"{n}: leftover of an interrupted compaction or snapshot (removed on next "
              f"open)" for n in rec.listing.leftovers]
    for seq, offset, name in rec.listing.snapshots:
        try:
            snap = load_snapshot(path / name, max_record)
        except SnapshotDamaged as exc:
            problems.append(f"{exc.message} (the log itself is complete; `repair` moves the "
                            f"snapshot aside)")
            continue
        if seq not in rec.segments or (seq == rec.last_segment and offset > rec.end):
            problems.append(f"snapshot {name} is ahead of the log")
        elif snap.counters.records > rec.reducer.records:
            problems.append(f"snapshot {name} counts more records than the log holds")
    r = rec.reducer
    return VerifyReport(not problems, tuple(problems), tuple(notes), len(rec.segments),
                        r.records, r.events, rec.bytes)


def scan_segment(buf: bytes, meta: Meta, seq: int, *, last: bool, start: int,
                 max_record: int) -> SegmentScan:
    """Scan a segment's bytes from ``start`` by the rules of its format version."""
    _, version = check_file_header(buf, SEGMENT_MAGIC)
    if version == 1:
        return scan_records(buf, start, last_segment=last, max_record=max_record)
    sealed = meta.sealed[1] if seq == meta.sealed[0] else (2**63 if seq < meta.sealed[0] else 0)
    return scan_groups(buf, start, salt=meta.salt, segment=seq, last_segment=last,
                       sealed=sealed, max_record=max_record)


def _segment_scans(path: Path, max_record: int) -> Iterator[tuple[str, Any]]:
    """(segment name, scan) in log order, read-only; raises on the first damage."""
    meta = read_meta(path)
    segments = list_directory(path, meta.generation).segments
    if not segments:
        raise CorruptLogError(f"{path}: no segment of generation {meta.generation} exists")
    for prev, seq in zip([segments[0] - 1, *segments], segments, strict=False):
        name = segment_name(meta.generation, seq)
        if seq != prev + 1:
            missing = segment_name(meta.generation, prev + 1)
            raise CorruptLogError(f"segment {missing} is missing", segment=missing, offset=0)
        buf = (path / name).read_bytes()
        header, _ = check_file_header(buf, SEGMENT_MAGIC)
        if header is not FileHeader.OK:
            if seq == segments[-1] and header is FileHeader.SHORT and seq != meta.sealed[0]:
                return
            raise CorruptLogError(f"segment header: {header.value}", segment=name, offset=0)
        scan = scan_segment(buf, meta, seq, last=seq == segments[-1], start=FILE_HEADER_SIZE,
                            max_record=max_record)
        yield name, scan
        if scan.outcome is Outcome.REFUSE:
            raise CorruptLogError(f"mid-log corruption: {scan.detail}", segment=name,
                                  offset=scan.end)


def _wire(t: EventTuple) -> dict[str, Any]:
    source, key, version, deleted, encoded, _ = t
    out: dict[str, Any] = {"source": source, "key": list(key), "version": version}
    if deleted:
        out["deleted"] = True
    else:
        out["value"] = decode_value(encoded)
    return out


def dump_log(directory: str | os.PathLike[str], *,
             max_record: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[dict[str, Any]]:
    """Every event the log holds, in log order, each distinct stored event once.

    Raises ``CorruptLogError`` after yielding what precedes mid-log corruption.
    """
    seen: set[tuple[str, tuple[str, ...], int, bool, bytes]] = set()
    for name, scan in _segment_scans(Path(directory), max_record):
        for offset, rtype, payload in scan.records:
            if rtype != RecordType.BATCH:
                continue
            try:
                stored = unpack(payload)[0]
            except (ValueError, TypeError) as exc:
                raise unreadable_payload(exc, name, offset) from None
            for t in stored:
                identity = (t[0], t[1], t[2], t[3], t[4])
                if identity not in seen:
                    seen.add(identity)
                    yield _wire(t)


@attrs.frozen
class StatsReport:
    format_version: int  # of the marker (a format 1 log is upgraded when a replica opens it)
    segment_versions: tuple[int, ...]  # the format versions of the live segments, distinct
    generation: int
    segments: int
    bytes: int
    records: int
    batches: int
    events: int
    live_keys: int  # registers holding a value
    tombstones: int  # registers holding a deletion
    oldest_version: int | None  # over every stored event
    newest_version: int | None
    checkpoints: dict[str, Any]
    snapshots: tuple[str, ...]


class _VersionRange(Reducer):
    oldest: int | None = None
    newest: int | None = None

    def add_events(self, events: Iterable[EventTuple]) -> None:
        events = list(events)
        if events:
            versions = [t[2] for t in events]
            low, high = min(versions), max(versions)
            self.oldest = low if self.oldest is None else min(self.oldest, low)
            self.newest = high if self.newest is None else max(self.newest, high)
        super().add_events(events)


def stats_log(directory: str | os.PathLike[str], *,
              max_record: int = DEFAULT_MAX_RECORD_BYTES) -> StatsReport:
    reducer = _VersionRange()
    rec = recover_directory(Path(directory), writable=False, fsync=False,
                            max_record=max_record, use_snapshots=False, reducer=reducer)
    tombstones = sum(1 for t in reducer.best.values() if t[3])
    versions = set()
    for seq in rec.segments:
        with open(Path(directory) / segment_name(rec.generation, seq), "rb") as f:
            header, version = check_file_header(f.read(FILE_HEADER_SIZE), SEGMENT_MAGIC)
        if header is FileHeader.OK:
            versions.add(version)
    return StatsReport(rec.found_version, tuple(sorted(versions)), rec.generation,
                       len(rec.segments), rec.bytes, reducer.records, reducer.batches,
                       reducer.events, len(reducer.best) - tombstones,
                       tombstones, reducer.oldest, reducer.newest,
                       {k: v for k, v in reducer.checkpoints.items() if k != STATE_SOURCE},
                       tuple(name for _, _, name in rec.listing.snapshots))


@attrs.frozen
class CompactReport:
    generation: int
    bytes_before: int
    bytes_after: int
    registers: int
    tombstones_dropped: int
    notes: tuple[str, ...]


def compact_log(directory: str | os.PathLike[str], *, tombstones_before: int | None = None,
                horizons: Horizons | None = None, document_depth: int = 2,
                segment_bytes: int = 64 * 2**20,
                max_record: int = DEFAULT_MAX_RECORD_BYTES) -> CompactReport:
    """Rewrite the log as its winners, dropping the tombstones ``View.compact`` drops.

    ``tombstones_before`` is a hybrid-clock horizon (counter-versioned tombstones are kept
    unless ``horizons`` names their source); ``horizons`` gives per-source ones. Nothing
    is dropped that would change a document, and the floors of what was dropped are kept
    with the new generation (see ``_horizon``)."""
    if tombstones_before is not None:
        horizons = Horizons(tombstones_before, {} if horizons is None else horizons.sources)
    path = Path(directory)
    read_meta(path)  # a clear error before creating a LOCK file in a foreign directory
    lock = lock_directory(path)
    try:
        rec = recover_directory(path, writable=True, fsync=True, max_record=max_record)
        checkpoints = dict(rec.reducer.checkpoints)
        raw = checkpoints.pop(STATE_SOURCE, None)
        state = CompactionState() if raw is None else CompactionState.from_json(raw)
        view = View(document_depth=document_depth)
        view.load_stored(rec.reducer.take_winners(), lazy=True)
        view.restore(state)
        view.resume_changes(state.change_seq + rec.reducer.events)
        dropped = 0 if horizons is None else view.compact(horizons)
        events = list(view.registers())
        checkpoints[STATE_SOURCE] = view.compaction_state().to_json()
        result, _ = compact_directory(path, rec.generation, rec.bytes, events,
                                      checkpoints, dropped,
                                      segment_bytes=segment_bytes, fsync=True)
        return CompactReport(result.generation, result.bytes_before, result.bytes_after,
                             result.registers, dropped, rec.notes)
    finally:
        os.close(lock)


@attrs.frozen
class RepairReport:
    damage: str | None  # what was wrong (None: nothing to repair)
    moved_to: str | None  # where the damaged files went
    moved: tuple[str, ...]  # what was moved aside
    lost_bytes: int
    lost_records: int  # whole records still readable in the moved part (not replayed)
    lost_events: int
    cursors: dict[str, Any]  # where each source resumes: it redelivers what follows
    salvaged_events: int = 0  # readable events after the damage, written back (no cursor)
    cursors_rolled_back: int = 0  # cursors recorded after the damage, dropped


@attrs.define
class _Readable:
    """What can still be read after damage: counts, and the events worth keeping."""

    records: int = 0  # whole, decodable records not replayed as they were
    events: int = 0
    salvage: list[EventTuple] = attrs.Factory(list)  # events to write back
    cursors: int = 0  # cursor records (and batch checkpoints) dropped
    kept: int = 0  # records whose events are written back


def _read_after_damage(buf: bytes, start: int, max_record: int, meta: Meta, seq: int,
                       out: _Readable) -> None:
    """Resync past damage and collect what is readable from ``start`` on.

    Only format 2 groups are salvaged: a salted group header cannot come from a stored
    value, so what follows one is a real write. In format 1 a "record" found by resyncing
    could be tenant bytes inside a value: those records are counted, never written back.
    """
    offset: int | None = start
    v1 = check_file_header(buf, SEGMENT_MAGIC)[1] == 1
    while offset is not None and offset < len(buf):
        scan = scan_segment(buf, meta, seq, last=False, start=offset, max_record=max_record)
        for _, rtype, payload in scan.records:
            try:
                body = unpack(payload)
                events = list(body[0]) if rtype == RecordType.BATCH else []
                for t in events:
                    source, key, version, deleted, encoded, _ = t
                    if not deleted:
                        decode_value(encoded)  # readable, or the whole record is not
                    if not (isinstance(source, str) and isinstance(version, int)
                            and all(isinstance(k, str) for k in key)):
                        raise TypeError("not an event")
            except (ValueError, TypeError):
                continue  # unreadable: lost (it stays in the moved files)
            out.records += 1
            out.events += len(events)
            if rtype == RecordType.CHECKPOINT or (rtype == RecordType.BATCH
                                                  and body[1] is not None):
                out.cursors += 1
            if not v1 and events:
                out.salvage.extend(events)
                out.kept += 1
        if scan.outcome is Outcome.ACCEPT:
            offset = None
        elif v1:
            offset = find_whole_record(buf, scan.end + 1, max_record)
        else:
            offset = find_group_header(buf, scan.end + 1, meta.salt, seq)


def _find_damage(path: Path, max_record: int) -> CorruptLogError | None:
    """The first damage: a bad frame or group, or a whole record that does not decode."""
    try:
        for _ in _segment_scans(path, max_record):
            pass
        recover_directory(path, writable=False, fsync=False, max_record=max_record,
                          use_snapshots=False)
    except CorruptLogError as exc:
        return exc
    return None


def _group_start(path: Path, meta: Meta, damage: CorruptLogError, max_record: int) -> int:
    """Where the group holding the damaged offset starts (format 2); repair cuts there."""
    offset = damage.offset or 0
    name = str(damage.segment)
    if not (path / name).exists() or offset <= FILE_HEADER_SIZE:
        return offset
    buf = (path / name).read_bytes()
    if check_file_header(buf, SEGMENT_MAGIC)[1] == 1:
        return offset
    seq = int(name.split("-")[1].split(".")[0])
    at = FILE_HEADER_SIZE
    while at < offset:
        state, end, _, _ = check_group(buf, at, meta.salt, seq, max_record)
        if state is not FrameState.WHOLE or end > offset:
            return at
        at = end
    return at


def repair_log(directory: str | os.PathLike[str], *,
               max_record: int = DEFAULT_MAX_RECORD_BYTES) -> RepairReport:
    """Move the damaged suffix of the log (and damaged snapshots) into ``damaged/``."""
    path = Path(directory)
    meta = read_meta(path)
    lock = lock_directory(path)
    try:
        damage = _find_damage(path, max_record)
        if damage is not None and damage.segment is not None:
            damage = CorruptLogError(damage.message.rsplit(" (", 1)[0], segment=damage.segment,
                                     offset=_group_start(path, meta, damage, max_record))
        listing = list_directory(path, meta.generation)
        bad_snaps = []
        for _, _, name in listing.snapshots:
            try:
                load_snapshot(path / name, max_record)
            except SnapshotDamaged:
                bad_snaps.append(name)
        if damage is None and not bad_snaps:
            rec = recover_directory(path, writable=False, fsync=False, max_record=max_record)
            return RepairReport(None, None, (), 0, 0, 0,
                                split_checkpoints(rec.reducer.checkpoints)[0])
        aside = path / DAMAGED_DIR / time.strftime("%Y%m%dT%H%M%S")
        aside.mkdir(parents=True, exist_ok=True)
        moved: list[str] = []
        readable = _Readable()
        lost = [0]
        if damage is not None:
            moved = _move_suffix(path, aside, meta, listing.segments, damage, max_record,
                                 lost, readable)
            for seq, offset, name in listing.snapshots:  # now ahead of the log
                seg = segment_name(meta.generation, seq)
                if name not in bad_snaps and (seg in moved or (
                        seg == damage.segment and offset > (damage.offset or 0))):
                    bad_snaps.append(name)
        for name in bad_snaps:
            os.rename(path / name, aside / name)
            moved.append(name)
        fsync_dir(aside)
        fsync_dir(path)
        rec = recover_directory(path, writable=True, fsync=True, max_record=max_record)
        if readable.salvage:
            # The merge is order-independent: what was readable after the damage goes
            # back at the end, as batches without a cursor. The cursors recorded after the
            # damage are not written back: the sources resume from the last cursor before
            # it, and so redeliver the lost batch (and, harmlessly, the salvaged ones).
            _append_events(path, rec, readable.salvage, max_record)
            rec = recover_directory(path, writable=True, fsync=True, max_record=max_record)
        if damage is not None:
            # What is left was checked whole and is durable: sealed up to its end (an older
            # seal may point past the cut, where the next writes now go).
            write_meta(path, attrs.evolve(rec.meta, sealed=(rec.last_segment, rec.end)),
                       fsync=True)
        what = damage.message if damage is not None else "damaged snapshot(s)"
        salvaged = len(readable.salvage)
        return RepairReport(what, str(aside), tuple(moved), lost[0],
                            readable.records - readable.kept, readable.events - salvaged,
                            split_checkpoints(rec.reducer.checkpoints)[0], salvaged,
                            readable.cursors)
    finally:
        os.close(lock)


def _append_events(path: Path, rec: Any, events: list[EventTuple], max_record: int) -> None:
    """Write ``events`` at the end of the log as checkpoint-less batches, in one group."""
    writer = SegmentWriter(path, rec.generation, rec.last_segment, salt=rec.meta.salt,
                           fsync=True)
    try:
        if rec.last_version != FORMAT_VERSION:
            writer.rotate()
        frames = []
        for i in range(0, len(events), 1000):
            data = frame(RecordType.BATCH, tuples_payload(events[i:i + 1000]))
            if len(data) > max_record:  # (cannot happen: each came from a smaller record)
                raise CorruptLogError("salvaged events do not fit a record")
            frames.append(data)
        writer.write(writer.group(b"".join(frames), len(frames)))
    finally:
        writer.close()


def _move_suffix(path: Path, aside: Path, meta: Meta, segments: list[int],
                 damage: CorruptLogError, max_record: int, lost: list[int],
                 readable: _Readable) -> list[str]:
    """Copy the damaged segment's tail aside and truncate it; move later segments aside."""
    generation = meta.generation
    names = [segment_name(generation, s) for s in segments]
    if damage.segment in names:
        first = names.index(damage.segment)
    else:  # a missing segment: everything after the gap goes
        gap = int(str(damage.segment).split("-")[1].split(".")[0])
        first = next((i for i, s in enumerate(segments) if s > gap), len(names))
    moved = []
    for i in range(first, len(names)):
        buf = (path / names[i]).read_bytes()
        start = (damage.offset or 0) if i == first else FILE_HEADER_SIZE
        if i == first and start > FILE_HEADER_SIZE:
            target = aside / f"{names[i]}.from-{start}"
            target.write_bytes(buf[start:])
            fsync_file(target)
            with open(path / names[i], "r+b") as f:
                f.truncate(start)
                os.fsync(f.fileno())
            moved.append(f"{names[i]} from offset {start}")
        else:
            os.rename(path / names[i], aside / names[i])
            moved.append(names[i])
        lost[0] += len(buf) - start
        _read_after_damage(buf, max(start, FILE_HEADER_SIZE), max_record, meta, segments[i],
                           readable)
    if first == 0 and moved and moved[0] == names[0]:
        # Keep the generation non-empty: an empty first segment in place of the damaged one.
        create_segment(path, generation, segments[0], fsync=True)
    return moved
