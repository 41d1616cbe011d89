"""What recovery does with each record it meets: the decision table, and the pure scanner.

Theory of operation
-------------------
The appender writes whole groups at the end of the last segment, fdatasyncs, and only then
acknowledges. It starts the next write only after that fdatasync, and rotates to a new
segment only after the old one is durable. So a crash (kill -9, power loss) can damage only
the *last group* of the *last* segment: the write that was in flight, which nobody was told
is durable. Everything before it was acknowledged and must come back exactly.

Format 2 (``scan_groups``) knows where each write begins and ends: every group commit is
one group, a header (salted CRC, the position it sits at, the length and count of its
records) then its records. Told apart by what follows a group that is not whole:

* **whole group** — header and every record check out and tile its body: replay it.
* **torn tail** — a group in the last segment that is not whole, with *no* valid group
  header anywhere after it, at or past the marker's ``sealed`` position: the remains of an
  unacknowledged write. Cut the whole group (whatever its bytes hold: a torn write can
  leave some of its records whole, or tenant bytes that look like records) and say so.
* **mid-log corruption** — anything else: a later group header proves this group was
  written and fsynced before it (the next write starts only after the fdatasync), and a
  generation compaction sealed is durable by construction. Refuse to open, naming segment
  and offset; ``imds-replica log repair`` moves the damage aside.

Only a group header can prove a later write, and a header needs the generation's secret
salt and names its own position: no value a tenant can store is mistaken for one, and a
random match needs a 32-bit CRC to agree by chance.

Format 1 segments (``scan_records``, written by release 0.1.0 and read as they are) have no
groups: there, "something follows" means a whole record at any later byte offset, so a
torn tail that holds bytes looking like a record reads as corruption. A record with a good
checksum but a type this build does not know was written by something newer: always refuse.
"""

from __future__ import annotations

import enum

import attrs

from ._frame import (
    GROUP_PAYLOAD,
    GROUP_SIZE,
    GROUP_TAG,
    HEADER,
    HEADER_SIZE,
    RECORD_TYPES,
    crc32c,
    read_group_header,
)

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


def _decision(state: FrameState, follows: bool, last: bool, sealed: bool) -> Outcome:
    if state is FrameState.WHOLE:
        return Outcome.ACCEPT
    if state is FrameState.UNKNOWN_TYPE or follows or not last or sealed:
        return Outcome.REFUSE
    return Outcome.TRUNCATE  # the write the crash interrupted (garbage or zeros included)


#: (state of the frame or group, a later write follows it, it is in the last segment, it
#: lies before the sealed position) -> outcome. Rotation happens after fsync, so damage
#: outside the last segment is no crash artifact; nor is damage a later write follows.
DECISIONS: dict[tuple[FrameState, bool, bool, bool], Outcome] = {
    (state, follows, last, sealed): _decision(state, follows, last, sealed)
    for state in FrameState for follows in (False, True) for last in (False, True)
    for sealed in (False, True)}


def decide(state: FrameState, whole_after: bool, last_segment: bool,
           sealed: bool = False) -> Outcome:
    return DECISIONS[state, whole_after, last_segment, sealed]


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
    if rtype not in RECORD_TYPES:
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
        if rtype in RECORD_TYPES and length <= max_record and end <= size \
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
            if (length <= max_record and end <= size and rtype in RECORD_TYPES
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


def find_group_header(buf: Buffer, start: int, salt: int, segment: int) -> int | None:
    """The first offset >= ``start`` where a valid group header of this segment begins."""
    data = buf if isinstance(buf, bytes) else bytes(buf)
    at = data.find(GROUP_TAG, start + 4)
    while at >= 0:
        if read_group_header(data, at - 4, salt, segment) is not None:
            return at - 4
        at = data.find(GROUP_TAG, at + 1)
    return None


def check_group(buf: Buffer, offset: int, salt: int, segment: int, max_record: int
                ) -> tuple[FrameState, int, list[tuple[int, int, memoryview]], str]:
    """Check the group at ``offset``: (state, end offset, its records, what is wrong)."""
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    size = len(view)
    if offset + GROUP_SIZE > size:
        return FrameState.INCOMPLETE, size, [], (
            f"group header at offset {offset} cut short ({size - offset} of {GROUP_SIZE} "
            f"bytes)")
    head = read_group_header(view, offset, salt, segment)
    if head is None:
        return FrameState.DAMAGED, offset, [], f"damaged group header at offset {offset}"
    body, count = head
    end = offset + GROUP_SIZE + body
    if end > size:
        return FrameState.INCOMPLETE, size, [], (
            f"group at offset {offset} runs past the end ({size - offset} of "
            f"{end - offset} bytes)")
    records: list[tuple[int, int, memoryview]] = []
    at = offset + GROUP_SIZE
    inner = view[:end]
    while at < end:
        state, rtype, stop, detail = frame_at(inner, at, max_record)
        if state is not FrameState.WHOLE:
            return state, end, [], f"group at offset {offset}: {detail}"
        records.append((at, rtype, view[at + HEADER_SIZE:stop]))
        at = stop
    if len(records) != count:
        return FrameState.DAMAGED, end, [], (
            f"group at offset {offset} holds {len(records)} records, its header says {count}")
    return FrameState.WHOLE, end, records, ""


def scan_groups(buf: Buffer, start: int, *, salt: int, segment: int, last_segment: bool,
                sealed: int, max_record: int) -> SegmentScan:
    """Scan whole groups from ``start`` (format 2) and decide what the first bad one means.

    ``sealed`` is the offset in this segment before which everything was durable before
    the marker named the generation (0: nothing sealed here). Pure, like ``scan_records``;
    ``records`` holds the records of the whole groups (not the group headers).
    """
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    size = len(view)
    records: list[tuple[int, int, memoryview]] = []
    offset = start
    unpack, unpack_group = HEADER.unpack_from, GROUP_PAYLOAD.unpack_from
    while offset < size:
        # Fast path for a whole group (the checks of check_group, inlined); check_group
        # explains anything unusual.
        if offset + GROUP_SIZE <= size and view[offset + 4:offset + HEADER_SIZE] == GROUP_TAG \
                and crc32c(view[offset + 4:offset + GROUP_SIZE], salt) == unpack(view, offset)[0]:
            seg, where, body, count = unpack_group(view, offset + HEADER_SIZE)
            end = offset + GROUP_SIZE + body
            if (seg, where) == (segment, offset) and end <= size:
                at, found = offset + GROUP_SIZE, []
                while at + HEADER_SIZE <= end:
                    crc, length, rtype = unpack(view, at)
                    stop = at + HEADER_SIZE + length
                    if length > max_record or stop > end or rtype not in RECORD_TYPES \
                            or crc32c(view[at + 4:stop]) != crc:
                        break
                    found.append((at, rtype, view[at + HEADER_SIZE:stop]))
                    at = stop
                if at == end and len(found) == count:
                    records.extend(found)
                    offset = end
                    continue
        state, end, found, detail = check_group(view, offset, salt, segment, max_record)
        if state is FrameState.WHOLE:  # (unreachable: the fast path took it)
            records.extend(found)
            offset = end
            continue
        follows = find_group_header(buf if isinstance(buf, bytes) else view, offset + 1, salt,
                                    segment) is not None
        outcome = decide(state, follows, last_segment, offset < sealed)
        if outcome is Outcome.REFUSE:
            if follows:
                detail += "; later writes follow it"
            elif offset < sealed:
                detail += ("; it was sealed (by a compaction, a repair or a clean stop), so it is "
                           "no torn write")
        return SegmentScan(records, offset, size, outcome, detail, state)
    return SegmentScan(records, offset, size, Outcome.ACCEPT, "")
