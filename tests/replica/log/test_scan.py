"""The record scanner and recovery table: every truncation offset, every bit flip."""

from __future__ import annotations

import itertools
from pathlib import Path

import attrs
import pytest
import trio

from imds_replica import Event, View
from imds_replica._log._frame import (
    DEFAULT_MAX_RECORD_BYTES,
    FILE_HEADER_SIZE,
    SEGMENT_MAGIC,
    FileHeader,
    RecordType,
    batch_payload,
    check_file_header,
    event_tuple,
    file_header,
    frame,
    trusted_event,
)
from imds_replica._log._recovery import (
    DECISIONS,
    FrameState,
    Outcome,
    SegmentScan,
    scan_records,
)
from imds_replica._log._replay import Reducer, recover_directory
from imds_replica._log._segment import META_NAME, Meta, read_meta
from imds_replica._log._tools import scan_segment

from .._helpers import view_of
from ._helpers import make_batches, only_segment, stored_records, write_log

MAX = DEFAULT_MAX_RECORD_BYTES


def test_decision_table_is_total_and_refuses_unless_last_segment() -> None:
    combos = set(itertools.product(FrameState, [False, True], [False, True], [False, True]))
    assert set(DECISIONS) == combos
    for (state, after, last, sealed), outcome in DECISIONS.items():
        if state is FrameState.WHOLE:
            assert outcome is Outcome.ACCEPT
        elif state is FrameState.UNKNOWN_TYPE or after or not last or sealed:
            assert outcome is Outcome.REFUSE
        else:
            assert outcome is Outcome.TRUNCATE


def test_trusted_event_equals_validated_event_field_for_field() -> None:
    events = [
        Event("fabric", ("vms", "a"), 3, {"b": [1, 2.5, None, True], "a": "é"}, seq=9),
        Event("tags", ("k",), 0, None, deleted=True),
        Event("s", ("k", "l"), 2**63 - 1, [[], {}], seq=None),
        Event("s", ("k",), 1, -(2**63)),
    ]
    for event in events:
        rebuilt = trusted_event(tuple(event_tuple(event)))
        for field in attrs.fields(Event):
            assert getattr(rebuilt, field.name) == getattr(event, field.name), field.name
        assert repr(rebuilt) == repr(event)


def test_file_header_states() -> None:
    good = file_header(SEGMENT_MAGIC)
    assert check_file_header(good, SEGMENT_MAGIC) == (FileHeader.OK, 2)
    assert check_file_header(file_header(SEGMENT_MAGIC, 1), SEGMENT_MAGIC) == (FileHeader.OK, 1)
    assert check_file_header(good[:7], SEGMENT_MAGIC)[0] is FileHeader.SHORT
    assert check_file_header(b"\0" * 16, SEGMENT_MAGIC)[0] is FileHeader.DAMAGED
    assert check_file_header(b"hello, world!!!!", SEGMENT_MAGIC)[0] is FileHeader.FOREIGN
    flipped = bytes([good[0] ^ 1]) + good[1:]
    assert check_file_header(flipped, SEGMENT_MAGIC)[0] is FileHeader.DAMAGED


def test_unknown_record_type_with_good_checksum_refuses() -> None:
    body = frame(RecordType.CHECKPOINT, b"\x92\xa1s\xc4\x01\x01")
    raw = bytearray(body)
    raw[8] = 99  # the type byte: re-checksum so only the type is "from the future"
    from imds_replica._log._frame import crc32c
    raw[:4] = crc32c(bytes(raw[4:])).to_bytes(4, "little")
    scan = scan_records(file_header(SEGMENT_MAGIC) + bytes(raw), FILE_HEADER_SIZE,
                        last_segment=True, max_record=MAX)
    assert scan.outcome is Outcome.REFUSE
    assert "unknown type 99" in scan.detail


Segment = tuple[bytes, list[int], list[bytes], Meta, bytes]


@pytest.fixture(scope="module", params=[1, 2])
def segment(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Segment:
    """A one-segment log of >= 1,000 events, one batch per write, in format 1 (as 0.1.0
    wrote it) or 2; its bytes, write ends, prefix digests, marker and marker bytes."""
    batches = make_batches(1000, seed=7)
    directory = tmp_path_factory.mktemp("seg") / "log"
    trio.run(lambda: write_log(directory, batches, snapshot_every=None))
    meta = read_meta(directory)
    if request.param == 1:
        buf = file_header(SEGMENT_MAGIC, 1) + b"".join(
            frame(RecordType.BATCH, batch_payload(events, cp)) for events, cp in batches)
        meta = Meta(1, 1)
    else:
        buf = only_segment(directory).read_bytes()
    scan = scan_segment(buf, meta, 1, last=True, start=FILE_HEADER_SIZE, max_record=MAX)
    assert scan.outcome is Outcome.ACCEPT
    # Format 1 (written here) holds every batch; FileLog skips those that change nothing.
    records = [events for events, _ in batches] if request.param == 1 \
        else stored_records(batches)
    assert len(scan.records) == len(records)
    ends = [FILE_HEADER_SIZE] + [off + 9 + len(p) for off, _, p in scan.records]
    digests = [view_of(*(e for r in records[:k] for e in r)).digest()
               for k in range(len(records) + 1)]
    return buf, ends, digests, meta, (directory / META_NAME).read_bytes()


def _scan(buf: bytes | bytearray, meta: Meta) -> SegmentScan:
    return scan_segment(bytes(buf), meta, 1, last=True, start=FILE_HEADER_SIZE,
                        max_record=MAX)


def _digest(records: list[tuple[int, int, memoryview]]) -> bytes:
    reducer = Reducer()
    for _, rtype, payload in records:
        reducer.add_record(rtype, payload)
    view = View()
    for event in reducer.winners():
        view.apply(event)
    return view.digest()


def test_truncation_at_every_offset_keeps_longest_whole_prefix(segment: Segment) -> None:
    buf, ends, digests, meta, _ = segment
    whole = _scan(buf, meta).records
    k = 0
    checked: set[int] = set()
    for n in range(FILE_HEADER_SIZE, len(buf) + 1):
        while k + 1 < len(ends) and ends[k + 1] <= n:
            k += 1
        if k not in checked or n % 61 == 0 or n > len(buf) - 2000:
            # From the start: once per distinct prefix (and its replayed state), at a
            # sample of offsets, and everywhere near the end.
            scan = _scan(buf[:n], meta)
            assert [r[0] for r in scan.records] == [r[0] for r in whole[:k]]
            if k not in checked:
                assert _digest(scan.records) == digests[k]
                checked.add(k)
        else:  # Elsewhere from two writes back: the scanner is the same at any start.
            back = ends[max(k - 2, 0)]
            scan = scan_segment(buf[:n], meta, 1, last=True, start=back, max_record=MAX)
            assert [r[0] for r in scan.records] == [r[0] for r in whole[max(k - 2, 0):k]]
        assert scan.end == ends[k]
        assert scan.outcome is (Outcome.ACCEPT if n == ends[k] else Outcome.TRUNCATE)
    assert len(checked) == len(ends)


def test_truncated_files_recover_and_are_cut_back(segment: Segment, tmp_path: Path) -> None:
    """The full file path at and around every write boundary, and inside the header."""
    buf, ends, digests, _, marker = segment
    directory = tmp_path / "log"
    trio.run(lambda: write_log(directory, []))
    (directory / META_NAME).write_bytes(marker)  # the salt the segment was written with
    path = only_segment(directory)
    offsets = sorted({n for e in ends for n in (e - 1, e, e + 1) if 0 <= n <= len(buf)}
                     | set(range(FILE_HEADER_SIZE + 1)))
    for n in offsets:
        path.write_bytes(buf[:n])
        rec = recover_directory(directory, writable=True, fsync=False, max_record=MAX)
        k = max(i for i, e in enumerate(ends) if e <= max(n, FILE_HEADER_SIZE))
        view = View()
        for event in rec.reducer.winners():
            view.apply(event)
        assert view.digest() == digests[k], n
        assert path.stat().st_size == ends[k]
        assert bool(rec.notes) == (n != ends[k]), (n, rec.notes)


def test_every_bit_flip_in_last_three_records_is_detected(segment: Segment) -> None:
    buf, ends, _, meta, _ = segment
    whole = _scan(buf, meta).records
    flips = 0
    for r in (-3, -2, -1):
        start, stop = ends[r - 1], ends[r]
        for i in range(start, stop):
            for bit in range(8):
                damaged = bytearray(buf)
                damaged[i] ^= 1 << bit
                scan = _scan(damaged, meta)
                flips += 1
                # Never accepted: recovery stops exactly before the flipped record...
                assert scan.end == start
                assert [x[0] for x in scan.records] == [x[0] for x in whole[:r]]
                if r != -1:  # ...and refuses when acknowledged records follow it.
                    assert scan.outcome is Outcome.REFUSE, (r, i, bit)
                elif meta.version == 1:  # The last record looks like a torn write...
                    assert scan.outcome in (Outcome.REFUSE, Outcome.TRUNCATE)
                else:  # ...and so does the last group, but never a refusal over it.
                    assert scan.outcome is Outcome.TRUNCATE, (r, i, bit, scan.detail)
    assert flips > 3 * 8 * 20
