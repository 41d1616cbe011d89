"""What recovery does with each record it meets: the decision table, and the pure scanner.

Theory of operation
-------------------
The appender writes whole records at the end of the last segment, fdatasyncs, and only then
acknowledges. It rotates to a new segment only after the old one is durable. So a crash
(kill -9, power loss) can damage only the *end* of the *last* segment: the bytes of the
group commit that was being written, which nobody was told are durable. Everything before
that was acknowledged and must come back exactly.

Hence three cases, told apart by what follows a record that fails its checks:

* **whole record** — checksum, length and type are fine: replay it.
* **torn tail** — a bad or incomplete record in the last segment with *no* whole record
  anywhere after it: the remains of an unacknowledged write. Truncate there (and say so).
* **mid-log corruption** — a bad record with a whole record after it, or a bad record in a
  segment that is not the last: storage damaged acknowledged data. Refuse to open, naming
  segment and offset; ``imds-replica log repair`` moves the damaged suffix aside.

"Whole record after it" is decided by trying every later byte offset as a frame start: a
random match needs a 32-bit CRC to agree by chance. A record with a good checksum but a
type this build does not know was written by something newer: always refuse.
"""

from __future__ import annotations

import enum

import attrs

from ._frame import HEADER, HEADER_SIZE, KNOWN_TYPES, crc32c

Buffer = bytes | bytearray | memoryview


class FrameState(enum.Enum):
    WHOLE = "whole"
    INCOMPLETE = "incomplete"  # header or body runs past the end of the data
    DAMAGED = "damaged"  # checksum mismatch or impossible length
    UNKNOWN_TYPE = "unknown type"  # checksum fine, type from a newer format


class Outcome(enum.Enum):
    ACCEPT = "whole record"
    TRUNCATE = "torn tail"
    REFUSE = "mid-log corruption"


_W, _I, _D, _U = FrameState
#: (state of the frame, a whole record follows it, it is in the last segment) -> outcome
DECISIONS: dict[tuple[FrameState, bool, bool], Outcome] = {
    (_W, False, True): Outcome.ACCEPT,
    (_W, False, False): Outcome.ACCEPT,
    (_W, True, True): Outcome.ACCEPT,
    (_W, True, False): Outcome.ACCEPT,
    (_I, False, True): Outcome.TRUNCATE,  # the write the crash interrupted
    (_D, False, True): Outcome.TRUNCATE,  # ditto, with garbage or zeros after a power loss
    (_I, True, True): Outcome.REFUSE,
    (_D, True, True): Outcome.REFUSE,
    (_I, False, False): Outcome.REFUSE,  # rotation happens after fsync: not a crash artifact
    (_D, False, False): Outcome.REFUSE,
    (_I, True, False): Outcome.REFUSE,
    (_D, True, False): Outcome.REFUSE,
    (_U, False, True): Outcome.REFUSE,
    (_U, False, False): Outcome.REFUSE,
    (_U, True, True): Outcome.REFUSE,
    (_U, True, False): Outcome.REFUSE,
}


def decide(state: FrameState, whole_after: bool, last_segment: bool) -> Outcome:
    return DECISIONS[state, whole_after, last_segment]


def frame_at(buf: Buffer, offset: int, max_record: int) -> tuple[FrameState, int, int, str]:
    """Check the frame at ``offset``: (state, record type, end offset, what is wrong)."""
    size = len(buf)
    if offset + HEADER_SIZE > size:
        return FrameState.INCOMPLETE, 0, size, (
            f"record header at offset {offset} cut short ({size - offset} of {HEADER_SIZE} bytes)")
    crc, length, rtype = HEADER.unpack_from(buf, offset)
    if length > max_record:
        return FrameState.DAMAGED, rtype, offset, (
            f"record at offset {offset} claims an impossible length {length}")
    end = offset + HEADER_SIZE + length
    if end > size:
        return FrameState.INCOMPLETE, rtype, size, (
            f"record at offset {offset} runs past the end ({size - offset} of "
            f"{end - offset} bytes)")
    if crc32c(buf[offset + 4:end]) != crc:
        return FrameState.DAMAGED, rtype, end, f"checksum mismatch in record at offset {offset}"
    if rtype not in KNOWN_TYPES:
        return FrameState.UNKNOWN_TYPE, rtype, end, (
            f"record at offset {offset} has unknown type {rtype} (written by a newer version?)")
    return FrameState.WHOLE, rtype, end, ""


def find_whole_record(buf: Buffer, start: int, max_record: int) -> int | None:
    """The first offset >= ``start`` where a whole record begins, or None."""
    size = len(buf)
    unpack = HEADER.unpack_from
    for offset in range(start, size - HEADER_SIZE + 1):
        crc, length, rtype = unpack(buf, offset)
        end = offset + HEADER_SIZE + length
        if rtype in KNOWN_TYPES and length <= max_record and end <= size \
                and crc32c(buf[offset + 4:end]) == crc:
            return offset
    return None


@attrs.frozen
class SegmentScan:
    """The result of scanning one segment's bytes from some offset."""

    records: list[tuple[int, int, memoryview]]  # (offset, type, payload) of whole records
    end: int  # offset just past the last whole record: where valid data ends
    size: int  # bytes scanned up to (the data's length)
    outcome: Outcome  # ACCEPT: ended cleanly; TRUNCATE: torn tail at ``end``; REFUSE: damage
    detail: str  # what stopped the scan ("" when it ended cleanly)
    state: FrameState = FrameState.WHOLE


def scan_records(buf: Buffer, start: int, *, last_segment: bool,
                 max_record: int) -> SegmentScan:
    """Scan whole records from ``start`` and decide what the first bad one means.

    Pure: the same bytes always give the same answer, so tests run it at every truncation
    offset and on every bit flip.
    """
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    size = len(view)
    records: list[tuple[int, int, memoryview]] = []
    offset = start
    unpack = HEADER.unpack_from
    while offset < size:
        # Fast path for the common case; frame_at explains anything unusual.
        if offset + HEADER_SIZE <= size:
            crc, length, rtype = unpack(view, offset)
            end = offset + HEADER_SIZE + length
            if (length <= max_record and end <= size and rtype in KNOWN_TYPES
                    and crc32c(view[offset + 4:end]) == crc):
                records.append((offset, rtype, view[offset + HEADER_SIZE:end]))
                offset = end
                continue
        state, _, _, detail = frame_at(view, offset, max_record)
        after = find_whole_record(view, offset + 1, max_record) is not None
        outcome = decide(state, after, last_segment)
        if after and outcome is Outcome.REFUSE:
            detail += "; whole records follow it"
        return SegmentScan(records, offset, size, outcome, detail, state)
    return SegmentScan(records, offset, size, Outcome.ACCEPT, "")
