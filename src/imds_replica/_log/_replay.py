"""Recovery of a log directory into winners and cursors (blocking; run it in a thread).

Replay does not apply every stored event to the view: it folds them per key into the LWW
winner first (cheap tuple comparisons, no ``Event`` objects), then builds ``Event``s only
for the winners. Because the merge is a max over a total order, and ties keep the first
event in log order exactly as ``View.apply`` does, the resulting registers are identical to
applying every event in log order; only the view's change counters differ.
"""

from __future__ import annotations

import io
import itertools
import operator
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from .._errors import CorruptLogError, StorageError
from .._event import Event, Key
from .._gc import gc_paused
from .._horizon import STATE_SOURCE, CompactionState
from .._logport import keep_checkpoint
from ._frame import (
    FILE_HEADER_SIZE,
    FORMAT_VERSION,
    GROUP_PAYLOAD,
    GROUP_SIZE,
    GROUP_TAG,
    HEADER,
    HEADER_SIZE,
    RECORD_TYPES,
    SEGMENT_MAGIC,
    EventTuple,
    FileHeader,
    RecordType,
    check_file_header,
    crc32c,
    decode_checkpoint,
    file_header,
    stored_digest,
    trusted_event,
    unpack,
)
from ._recovery import Outcome, find_group_header, find_whole_record, scan_groups, scan_records
from ._segment import (
    Listing,
    Meta,
    fsync_dir,
    init_directory,
    list_directory,
    new_salt,
    read_meta,
    segment_name,
    storage_error,
    versions_read,
    write_meta,
)
from ._snapshot import Counters, SnapshotDamaged, load_snapshot

_key = operator.itemgetter(1)
_version = operator.itemgetter(2)
_BATCH = int(RecordType.BATCH)
_CHECKPOINT = int(RecordType.CHECKPOINT)
#: Bytes read at a time while replaying a segment. Records are checked and folded out of
#: one reused buffer of this size (grown only for a bigger record): no allocation, page
#: faults or copy of a whole segment, and the bytes are still in the CPU cache when the
#: payload is decoded right after its CRC was checked.
READ_CHUNK = 1 << 20


def _tie_key(t: EventTuple) -> tuple[str, bytes, int]:
    # The View's order on equal versions: source, digest, then the smaller seq (see _merge).
    return t[0], stored_digest(t), 1 if t[5] is None else -t[5]


class Reducer:
    """Folds stored records, in log order, into per-key winners and the latest cursors.

    Batch records that come with a place (``add_record(..., where=...)``: replay) are not
    folded one event at a time as they arrive. They are kept as bytes until the end of the
    segment (or the next CHECKPOINT record) and then decoded newest first, folding *whole
    records*: a record whose key list equals that of a record already kept, and whose
    versions are all below that record's (the usual shape: an agent re-pushing the same
    keys with newer hybrid-clock stamps), loses every event to it and is dropped right
    after it was decoded, with no per-event dict work (see ``_fold_window``). What is kept
    is folded per event at the end of the segment (``finish``), in log order, so an
    unreadable record is refused before anything after it is cut or read. Every record is still
    decoded in full, so a record whose checksum holds but whose payload does not decode is
    refused as before, at its place. A subclass that overrides ``add_events`` (to see
    every event) and a log with compaction floors (see ``note_state``) get the per-event
    fold throughout.
    """

    #: Payload bytes kept before a window is folded even inside a segment.
    WINDOW_BYTES = 64 * 2**20

    def __init__(self, counters: Counters | None = None) -> None:
        counters = counters or Counters()
        self._best: dict[Key, EventTuple] = {}
        self.checkpoints: dict[str, Any] = {}
        self.records = counters.records
        self.batches = counters.batches
        self.events = counters.events
        #: The greatest version folded so far (-1: none): see ``add_events``.
        self._max_version = -1
        #: See ``_share_key_parts``: one copy of each key part, and when to rebuild.
        self._parts: dict[str, str] = {}
        self._shared_size = 0
        self._unshared_events = 0
        #: Compaction floors (``_horizon``), once a compacted generation's state is read.
        self._floors: CompactionState | None = None
        #: Whole-record folding (see the class docstring): only the base fold can skip.
        self._defer = type(self).add_events is Reducer.add_events
        #: Batch records not decoded yet: (payload bytes, segment, offset), in log order.
        self._pending: list[tuple[bytes, str, int]] = []
        self._pending_bytes = 0
        #: Decoded records kept for ``finish``, in log order: [events, keys or None,
        #: lowest version or None, highest version or None, segment, offset]; events
        #: None once dropped.
        self._kept: list[list[Any]] = []
        #: (first key, last key, count) -> the newest-looked-at kept record with them.
        self._by_sig: dict[tuple[Any, Any, int], list[Any]] = {}
        self._failed_at = 0  # the pending record ``_fold_window`` is at (for errors)

    @property
    def best(self) -> dict[Key, EventTuple]:
        """Key -> winning stored event (everything added so far is folded first)."""
        self.finish()
        return self._best

    def note_state(self) -> None:
        """Take the compaction state from ``checkpoints`` (a compacted generation or a
        snapshot carries it): later events below its floors, for keys not folded yet,
        are dropped as the view drops them, so replay equals the live view."""
        raw = self.checkpoints.get(STATE_SOURCE)
        self._floors = None if raw is None else CompactionState.from_json(raw)

    def add_events(self, events: Iterable[EventTuple]) -> None:
        if self._pending or self._kept:
            self.finish()  # what came before these events is folded before them
        self._fold(events)

    def _fold(self, events: Iterable[EventTuple]) -> None:
        if not isinstance(events, (list, tuple)):
            events = list(events)
        best = self._best
        if self._floors is not None:
            events = self._floors.admit(events, best)
        if not events:
            return
        versions = [t[2] for t in events]
        # Fast path, the usual shape of a log (versions are hybrid-clock stamps that grow
        # with log position): when every event of the batch is newer than everything
        # folded so far and versions strictly increase inside the batch, each event beats
        # its key's current winner and any earlier event of the same key in the batch, so
        # the fold is a plain last-one-wins update done in C, with no per-event bytecode.
        # "Strictly increasing" is checked as "sorted, and no version twice": two C-level
        # passes (a sort of sorted input is one run of compares) instead of a call per pair.
        if versions[0] > self._max_version and versions == sorted(versions) \
                and len(set(versions)) == len(versions):
            best.update(zip(map(_key, events), events, strict=True))
            self._max_version = versions[-1]
        else:
            get = best.get
            for t in events:
                key = t[1]
                cur = get(key)
                if cur is None or t[2] > cur[2] or (
                        t[2] == cur[2] and _tie_key(t) > _tie_key(cur)):
                    best[key] = t
            self._max_version = max(self._max_version, max(versions))
        self._unshared_events += len(events)
        if self._unshared_events >= 8 * len(best) and len(best) >= 2 * self._shared_size:
            self._share_key_parts()

    def _share_key_parts(self) -> None:
        """Rebuild ``best`` (equal keys, same order) with one str object per key part.

        A dict keeps the key object of a register's first event, and each later event of
        that key compares its freshly decoded key against it part by part: with distinct
        str objects everywhere that is a cache miss per part. Keys share most parts
        (``vms``, ``compute``...), so after the rebuild those compares touch a few hot
        objects. Done only once keys are being reused (8 events per key since the last
        rebuild) and the dict has doubled, so it costs at most an eighth of a rebuild
        step per folded event, and nothing on a log of distinct keys.
        """
        canon = self._parts.setdefault
        self._best = {tuple(map(canon, k, k)): t for k, t in self._best.items()}
        self._shared_size = len(self._best)
        self._unshared_events = 0

    def add_record(self, rtype: int, payload: memoryview,
                   where: tuple[str, int] | None = None) -> None:
        """Fold one whole record; ValueError/TypeError if its payload is unreadable.

        ``payload`` is only read during the call (replay reuses its buffer afterwards).
        With ``where`` (segment, offset) a batch may be kept undecoded until ``flush``,
        which raises ``CorruptLogError`` naming that place if it is unreadable.
        """
        self.records += 1
        if rtype == _BATCH:
            if where is not None and self._defer and self._floors is None:
                self._pending.append((bytes(payload), where[0], where[1]))
                self._pending_bytes += len(payload)
                if self._pending_bytes >= self.WINDOW_BYTES:
                    self.flush()
                return
            batch = unpack(payload)  # [events, checkpoint, ...later fields, ignored]
            events, checkpoint = batch[0], batch[1]
            self.add_events(events)
            self.batches += 1
            self.events += len(events)
            if checkpoint is not None:
                keep_checkpoint(self.checkpoints, decode_checkpoint(checkpoint))
        elif rtype == _CHECKPOINT:
            checkpoint = decode_checkpoint(unpack(payload))
            # The cursors of the batches before it go in first (the latest one counts).
            self.flush()
            keep_checkpoint(self.checkpoints, checkpoint)
            if checkpoint.source == STATE_SOURCE:
                self.finish()  # the floors apply only to events after everything so far
                self.note_state()
        # SNAPSHOT markers carry nothing replay needs.

    def flush(self) -> None:
        """Decode and fold the batches kept as bytes (newest first: ``_fold_window``);
        ``CorruptLogError`` at the first one in log order that is unreadable."""
        pending = self._pending
        if not pending:
            return
        self._pending, self._pending_bytes = [], 0
        self._failed_at = len(pending) - 1
        try:
            self._fold_window(pending)
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            # Name the first unreadable record in log order, as a fold in log order would
            # have (the reducer is unusable after this anyway).
            for data, segment, offset in pending:
                try:
                    self.add_record(_BATCH, memoryview(data))
                except (ValueError, TypeError, IndexError, KeyError) as first:
                    raise unreadable_payload(first, segment, offset) from None
            _, segment, offset = pending[self._failed_at]
            raise unreadable_payload(exc, segment, offset) from None

    def _fold_window(self, pending: list[tuple[bytes, str, int]]) -> None:
        """Decode ``pending`` newest first, dropping each record that loses every event.

        Two records with the same key list (same keys, same order: compared in C) where
        every version of one is below every version of the other: each event of the first
        loses to the second's event of the same key, so the first is dropped whole (and,
        being the older one in the usual shape, it is freed right after its decode, while
        still in the CPU cache). Dropping only what a strictly greater version of the
        same key beats keeps the fold a max over the same order: a dropped event's key
        always ends with a kept event of a greater version. The cursors are taken in log
        order afterwards.
        """
        by_sig = self._by_sig
        get = by_sig.get
        kept: list[list[Any]] = []
        keep = kept.append
        cursors = []
        batches = events_seen = 0
        for i in range(len(pending) - 1, -1, -1):
            self._failed_at = i
            data, segment, offset = pending[i]
            batch = unpack(data)
            events, checkpoint = batch[0], batch[1]
            batches += 1
            events_seen += len(events)
            if checkpoint is not None:
                cursors.append(decode_checkpoint(checkpoint))
            if not events:
                continue
            sig = (events[0][1], events[-1][1], len(events))
            entry: list[Any] = [events, None, None, None, segment, offset]
            prev = get(sig)
            if prev is not None:
                keys = entry[1] = tuple(map(_key, events))
                if prev[1] is None:
                    prev[1] = tuple(map(_key, prev[0]))
                if keys == prev[1]:
                    if prev[2] is None:
                        versions = tuple(map(_version, prev[0]))
                        prev[2], prev[3] = min(versions), max(versions)
                    # The usual case (older, all below) needs only this record's highest.
                    high = entry[3] = max(map(_version, events))
                    if high < prev[2]:
                        continue  # every event loses to prev's of the same key
                    low = entry[2] = min(map(_version, events))
                    if low > prev[3]:
                        prev[0] = None  # every event of prev loses to this one's
            keep(entry)
            by_sig[sig] = entry
        self.batches += batches
        self.events += events_seen
        kept.reverse()
        self._kept.extend(kept)
        for checkpoint in reversed(cursors):
            keep_checkpoint(self.checkpoints, checkpoint)

    def finish(self) -> None:
        """Fold everything kept (``flush``, then the kept records per event, in log
        order) into ``best``."""
        self.flush()
        if not self._kept:
            return
        kept, self._kept = self._kept, []
        self._by_sig.clear()
        fold = self._fold
        for events, _, _, _, segment, offset in kept:
            if events is not None:
                try:
                    fold(events)
                except (ValueError, TypeError, IndexError, KeyError) as exc:
                    raise unreadable_payload(exc, segment, offset) from None

    @property
    def counters(self) -> Counters:
        self.flush()
        return Counters(self.records, self.batches, self.events)

    def winners(self) -> list[Event]:
        return [trusted_event(t) for t in self.best.values()]

    def take_winners(self) -> dict[Key, EventTuple]:
        """The winners as stored tuples, handed over (for ``View.load_stored``): the
        reducer holds none afterwards."""
        best, self._best = self.best, {}
        return best


@attrs.frozen
class Recovered:
    generation: int
    reducer: Reducer
    segments: list[int]
    last_segment: int
    end: int  # where the next record goes in the last segment
    bytes: int  # total bytes of the live generation's segments
    notes: tuple[str, ...]
    snapshot: str | None  # the snapshot replay started from
    listing: Listing
    meta: Meta  # the marker (after an upgrade: the new one)
    found_version: int  # the format version the marker had when recovery read it
    last_version: int  # the format version of the last segment (the writer's next file)


def recover_directory(directory: Path, *, writable: bool, fsync: bool, max_record: int,
                      use_snapshots: bool = True,
                      reducer: Reducer | None = None) -> Recovered:
    """Recover the live generation: winners, cursors, and where to append.

    Writable: creates a fresh directory, removes leftovers, truncates a torn tail (and
    says so in ``notes``). Raises ``CorruptLogError`` on mid-log corruption and
    ``StorageError`` for a foreign or newer directory.
    """
    notes: list[str] = []
    with gc_paused():
        return _recover(directory, notes, writable=writable, fsync=fsync,
                        max_record=max_record, use_snapshots=use_snapshots, reducer=reducer)


def _recover(directory: Path, notes: list[str], *, writable: bool, fsync: bool,
             max_record: int, use_snapshots: bool, reducer: Reducer | None) -> Recovered:
    try:
        meta = init_directory(directory, fsync=fsync) if writable else read_meta(directory)
        listing = list_directory(directory, meta.generation)
        if writable and listing.leftovers:
            for name in listing.leftovers:
                os.unlink(directory / name)
            if fsync:
                fsync_dir(directory)
            notes.append(f"removed {len(listing.leftovers)} leftover file(s) of an "
                         f"interrupted compaction or snapshot: {', '.join(listing.leftovers)}")
        rec = _replay(directory, meta, listing, notes, reducer or Reducer(),
                      writable=writable, fsync=fsync, max_record=max_record,
                      use_snapshots=use_snapshots)
        if writable and meta.version == 1:
            # Upgrade in place: the marker names format 2 (from now on a 0.1.0 build
            # refuses the directory, cleanly); format 1 segments stay and are read as they
            # are until a compaction rewrites them; the writer starts a format 2 segment.
            # Everything there now was durable before the new marker: sealed.
            meta = Meta(meta.generation, FORMAT_VERSION, new_salt(), (rec.last_segment, rec.end))
            write_meta(directory, meta, fsync=fsync)
            notes.append(f"upgraded the log from format version 1 to {FORMAT_VERSION}; format "
                         f"1 segments are kept and read until the next compaction")
            rec = attrs.evolve(rec, meta=meta, notes=tuple(notes))
        return rec
    except OSError as exc:
        raise storage_error(f"recovering {directory}", exc)


def _replay(directory: Path, meta: Meta, listing: Listing, notes: list[str],
            reducer: Reducer, *, writable: bool, fsync: bool, max_record: int,
            use_snapshots: bool) -> Recovered:
    generation = meta.generation
    segments = listing.segments
    if not segments:
        raise CorruptLogError(f"{directory}: the marker names generation {generation} but "
                              f"no segment of it exists")
    for prev, seq in itertools.pairwise(segments):
        if seq != prev + 1:
            raise CorruptLogError(f"segment {segment_name(generation, prev + 1)} is missing",
                                  segment=segment_name(generation, prev + 1), offset=0)
    start_seq, start_off, used = segments[0], FILE_HEADER_SIZE, None
    sizes = {seq: (directory / segment_name(generation, seq)).stat().st_size
             for seq in segments}
    for seq, off, name in reversed(listing.snapshots if use_snapshots else []):
        if seq not in sizes or off > sizes[seq]:
            notes.append(f"ignored snapshot {name}: it is ahead of the log")
            continue
        try:
            snap = load_snapshot(directory / name, max_record)
        except SnapshotDamaged as exc:
            notes.append(f"ignored {exc.message}; replaying the log instead")
            continue
        reducer = Reducer(snap.counters)
        reducer.add_events(snap.events)
        reducer.checkpoints.update(snap.checkpoints)
        reducer.note_state()
        start_seq, start_off, used = seq, off, name
        notes.append(f"started from snapshot {name} ({len(snap.events)} registers)")
        break
    end, version = start_off, meta.version
    for seq in segments[segments.index(start_seq):]:
        sealed = meta.sealed[1] if seq == meta.sealed[0] else (
            2**63 if seq < meta.sealed[0] else 0)
        end, version = _replay_segment(
            directory, generation, seq, start_off if seq == start_seq else FILE_HEADER_SIZE,
            reducer, notes, last=seq == segments[-1], writable=writable, fsync=fsync,
            max_record=max_record, salt=meta.salt, sealed=sealed)
        sizes[seq] = end if seq == segments[-1] else sizes[seq]
    reducer.finish()  # here, in the worker thread, not where the winners are taken
    return Recovered(generation, reducer, segments, segments[-1], end, sum(sizes.values()),
                     tuple(notes), used, listing, meta, meta.version, version)


def _replay_segment(directory: Path, generation: int, seq: int, start: int,
                    reducer: Reducer, notes: list[str], *, last: bool, writable: bool,
                    fsync: bool, max_record: int, salt: int, sealed: int) -> tuple[int, int]:
    """Fold one segment; returns (where valid data ends, the segment's format version)."""
    name = segment_name(generation, seq)
    path = directory / name
    # The usual case, a good header and whole records up to the end, streams through one
    # small buffer; anything else (a bad header, a frame that is not a whole record) falls
    # back to reading the whole segment and the decision table, from where streaming
    # stopped (every record before it was already checked and folded).
    with open(path, "rb", buffering=0) as f:
        header, version = check_file_header(f.read(FILE_HEADER_SIZE), SEGMENT_MAGIC)
        if header is FileHeader.OK:
            fold = _fold_stream if version == 1 else _fold_groups
            start, clean = fold(f, start, reducer, name, max_record, salt, seq)
            # Everything this segment's records hold is folded (and so any unreadable one
            # refused) before anything is cut or the next segment is read.
            reducer.finish()
            if clean:
                return start, version
    buf = path.read_bytes()
    header, version = check_file_header(buf, SEGMENT_MAGIC)
    if header is FileHeader.FUTURE:
        raise StorageError(f"segment {name} has log format version {version}; this build "
                           f"reads version{'s' if ' and ' in versions_read() else ''} "
                           f"{versions_read()} (upgrade imds-replica)")
    if header is FileHeader.FOREIGN:
        raise CorruptLogError("not an imds-replica segment", segment=name, offset=0)
    if header is not FileHeader.OK:
        follows = find_whole_record(buf, 0, max_record) is not None or (
            salt != 0 and find_group_header(buf, 0, salt, seq) is not None)
        if not last or follows or sealed > 0:
            raise CorruptLogError(f"segment header {header.value}", segment=name, offset=0)
        notes.append(f"rewrote the torn header of {name} ({len(buf)} bytes)")
        if writable:
            _truncate(path, 0, fsync, rewrite_header=True)
        return FILE_HEADER_SIZE, FORMAT_VERSION
    if version == 1:
        scan = scan_records(buf, start, last_segment=last, max_record=max_record)
    else:
        scan = scan_groups(buf, start, salt=salt, segment=seq, last_segment=last,
                           sealed=sealed, max_record=max_record)
    for offset, rtype, payload in scan.records:
        try:
            reducer.add_record(rtype, payload, (name, offset))
        except (ValueError, TypeError) as exc:
            raise unreadable_payload(exc, name, offset) from None
    reducer.finish()
    if scan.outcome is Outcome.REFUSE:
        raise CorruptLogError(f"mid-log corruption: {scan.detail}", segment=name,
                              offset=scan.end)
    if scan.outcome is Outcome.TRUNCATE:
        notes.append(f"truncated a torn tail of {scan.size - scan.end} bytes in {name} at "
                     f"offset {scan.end} ({scan.detail})")
        if writable:
            _truncate(path, scan.end, fsync, rewrite_header=False)
    return scan.end, version


def _fold_groups(f: io.FileIO, start: int, reducer: Reducer, segment: str,
                 max_record: int, salt: int, seq: int) -> tuple[int, bool]:
    """``_fold_stream`` for format 2: a group's records are folded only once the whole
    group (header, every record, the count) has checked out, so a torn group is never
    half-replayed. Returns like ``_fold_stream``."""
    f.seek(start)
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    base = start
    have = f.readinto(buf)
    pos = 0
    add = reducer.add_record
    unpack_header = HEADER.unpack_from
    unpack_group = GROUP_PAYLOAD.unpack_from
    known = RECORD_TYPES
    crc32c_ = crc32c
    tag = GROUP_TAG
    while True:
        need = GROUP_SIZE
        while pos + GROUP_SIZE <= have:
            crc = unpack_header(view, pos)[0]
            if view[pos + 4:pos + HEADER_SIZE] != tag or \
                    crc32c_(view[pos + 4:pos + GROUP_SIZE], salt) != crc:
                return base + pos, False
            where_seg, where, body, count = unpack_group(view, pos + HEADER_SIZE)
            if (where_seg, where) != (seq, base + pos):
                return base + pos, False
            end = pos + GROUP_SIZE + body
            if end > have:
                need = GROUP_SIZE + body
                break
            at, found = pos + GROUP_SIZE, []
            while at < end:
                if at + HEADER_SIZE > end:
                    return base + pos, False
                crc, length, rtype = unpack_header(view, at)
                stop = at + HEADER_SIZE + length
                if length > max_record or stop > end or rtype not in known \
                        or crc32c_(view[at + 4:stop]) != crc:
                    return base + pos, False
                found.append((at, rtype, stop))
                at = stop
            if len(found) != count:
                return base + pos, False
            for at, rtype, stop in found:
                try:
                    add(rtype, view[at + HEADER_SIZE:stop], (segment, base + at))
                except (ValueError, TypeError) as exc:
                    raise unreadable_payload(exc, segment, base + at) from None
            pos = end
        buf, view, have, got = _refill(f, buf, view, pos, have, need)
        base, pos = base + pos, 0
        if not got:
            return base, have == 0


def _fold_stream(f: io.FileIO, start: int, reducer: Reducer, segment: str,
                 max_record: int, salt: int = 0, seq: int = 0) -> tuple[int, bool]:
    """Check (length, type, CRC) and fold whole records from ``start``, a chunk at a time.

    Returns ``(offset, True)`` when whole records run exactly to the end of the file, or
    ``(offset of the first frame that is not a whole record, False)``: what that frame
    means (torn tail, corruption) is for ``scan_records`` to decide. This is the fast path
    of ``scan_records`` (same checks, same order) fused with folding.
    """
    f.seek(start)
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    base = start  # file offset of buf[0]
    have = f.readinto(buf)  # bytes of buf holding data
    pos = 0  # next frame, relative to base
    add = reducer.add_record
    unpack_header = HEADER.unpack_from
    known = RECORD_TYPES
    crc32c_ = crc32c
    while True:
        need = HEADER_SIZE
        while pos + HEADER_SIZE <= have:
            crc, length, rtype = unpack_header(view, pos)
            if length > max_record:
                return base + pos, False
            end = pos + HEADER_SIZE + length
            if end > have:
                need = HEADER_SIZE + length
                break
            if rtype not in known or crc32c_(view[pos + 4:end]) != crc:
                return base + pos, False
            try:
                add(rtype, view[pos + HEADER_SIZE:end], (segment, base + pos))
            except (ValueError, TypeError) as exc:
                raise unreadable_payload(exc, segment, base + pos) from None
            pos = end
        buf, view, have, got = _refill(f, buf, view, pos, have, need)
        base, pos = base + pos, 0
        if not got:
            return base, have == 0


def _refill(f: io.FileIO, buf: bytearray, view: memoryview, pos: int, have: int,
            need: int) -> tuple[bytearray, memoryview, int, int]:
    """Keep the partial frame at ``pos:have``, move it to the front (growing the buffer for
    one frame bigger than it) and read more after it. Returns the buffer, its view, the
    bytes it now holds and how many were read (0 at the end of the file)."""
    rest = have - pos
    if need > len(buf):
        grown = bytearray(need)
        grown[:rest] = view[pos:have]
        buf, view = grown, memoryview(grown)
    elif pos:
        buf[:rest] = bytes(view[pos:have])
    got = f.readinto(view[rest:]) or 0
    return buf, view, rest + got, got


def unreadable_payload(exc: Exception, segment: str, offset: int) -> CorruptLogError:
    """A record whose checksum holds but whose payload does not decode (msgpack's error)."""
    return CorruptLogError(f"record has a valid checksum but an unreadable payload ({exc})",
                           segment=segment, offset=offset)


def _truncate(path: Path, size: int, fsync: bool, *, rewrite_header: bool) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        if rewrite_header:
            os.write(fd, file_header(SEGMENT_MAGIC))
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
