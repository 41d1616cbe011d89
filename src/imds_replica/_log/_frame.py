"""Record framing and payloads: pure functions over bytes, no files.

A record on disk is ``crc32c u32 | length u32 | type u8 | payload`` (little-endian). The
CRC covers length, type and payload, so a flipped length or type is caught like a flipped
payload byte. Payloads are canonical msgpack. An event inside a payload is the tuple
``(source, key, version, deleted, encoded, seq)``: ``encoded`` is the event's canonical
value bytes (already validated when it was first accepted), so replay never re-normalizes
or re-encodes a value.

File headers (segments, snapshots) are 16 bytes: an 8-byte magic, u16 format version,
u16 zero, and the CRC32C of the first 12 bytes.

Format version 2 (segments) wraps each write in a group: a ``GROUP`` record whose payload
is ``segment u32 | offset u64 | body length u32 | records u32`` (where the group starts,
how many bytes of records follow, how many records) and whose CRC is *salted* with the
generation's secret salt (kept in the marker file), then the group's records. A tenant
string can hold bytes that look like a record, but not a group header: that needs the
salt, and it names the exact position it sits at. See ``_recovery`` for what this buys.
"""

from __future__ import annotations

import enum
import struct
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import crc32c as _crc32c
import msgpack

from .._codec import digest as value_digest
from .._codec import encode as encode_value
from .._event import Event
from .._logport import Checkpoint
from .._view import stored_event

#: The on-disk format version this build writes (segments, snapshots, metadata).
FORMAT_VERSION = 2
#: Every format version this build reads (version 1 segments are read as they are).
READ_VERSIONS = (1, 2)
HEADER = struct.Struct("<IIB")
HEADER_SIZE = HEADER.size  # 9
FILE_HEADER = struct.Struct("<8sHHI")
FILE_HEADER_SIZE = FILE_HEADER.size  # 16
SEGMENT_MAGIC = b"IMDSRLOG"
SNAPSHOT_MAGIC = b"IMDSSNAP"
#: Default ceiling on one record (one batch): a larger frame is refused on write and is
#: read as damage on recovery, so a flipped length bit can never make us allocate gigabytes.
DEFAULT_MAX_RECORD_BYTES = 64 * 2**20

crc32c = _crc32c.crc32c
#: A tombstone's digest, taken from ``Event`` itself so the two can never disagree.
TOMBSTONE_DIGEST = Event("x", ("x",), 0, deleted=True).digest

#: A stored event: (source, key, version, deleted, encoded value, seq).
EventTuple = tuple[str, tuple[str, ...], int, bool, bytes, "int | None"]


class RecordType(enum.IntEnum):
    BATCH = 1  # [[event tuple, ...], [source, cursor bytes] | nil]: all-or-nothing
    CHECKPOINT = 2  # [source, cursor bytes]: a resume cursor on its own (compaction output)
    SNAPSHOT = 3  # [snapshot file name]: a snapshot of the view up to here became durable
    SNAPSHOT_HEAD = 4  # snapshot files only: [generation, segment, offset, counters]
    SNAPSHOT_END = 5  # snapshot files only: [events, checkpoints]: the file is whole
    GROUP = 6  # format 2 segments: the header of one group commit (salted CRC; see above)


KNOWN_TYPES = frozenset(int(t) for t in RecordType)
#: The record types that may stand inside a group (or anywhere in a format 1 file).
RECORD_TYPES = KNOWN_TYPES - {int(RecordType.GROUP)}
GROUP_PAYLOAD = struct.Struct("<IQII")  # segment, offset, body length, records
GROUP_SIZE = HEADER_SIZE + GROUP_PAYLOAD.size  # 29: a group header on disk
#: Bytes 4..9 of every group header (its length and type): what a search looks for first.
GROUP_TAG = struct.pack("<IB", GROUP_PAYLOAD.size, int(RecordType.GROUP))


# -- writing -------------------------------------------------------------------------------
_LENGTH_TYPE = struct.Struct("<IB")
_CRC = struct.Struct("<I")


def frame(rtype: int, payload: bytes) -> bytes:
    """One framed record."""
    body = _LENGTH_TYPE.pack(len(payload), rtype) + payload
    return _CRC.pack(crc32c(body)) + body


def file_header(magic: bytes, version: int = FORMAT_VERSION) -> bytes:
    head = struct.pack("<8sHH", magic, version, 0)
    return head + struct.pack("<I", crc32c(head))


def group_header(salt: int, segment: int, offset: int, body: int, records: int) -> bytes:
    """The header of a group of ``records`` records (``body`` bytes) at ``offset``."""
    rest = _LENGTH_TYPE.pack(GROUP_PAYLOAD.size, int(RecordType.GROUP)) + \
        GROUP_PAYLOAD.pack(segment, offset, body, records)
    return _CRC.pack(crc32c(rest, salt)) + rest


def read_group_header(buf: bytes | memoryview, offset: int, salt: int,
                      segment: int) -> tuple[int, int] | None:
    """(body length, records) if a valid group header for this place starts at ``offset``."""
    if offset + GROUP_SIZE > len(buf) or bytes(buf[offset + 4:offset + HEADER_SIZE]) != GROUP_TAG:
        return None
    if crc32c(buf[offset + 4:offset + GROUP_SIZE], salt) != _CRC.unpack_from(buf, offset)[0]:
        return None
    seg, where, body, records = GROUP_PAYLOAD.unpack_from(buf, offset + HEADER_SIZE)
    if (seg, where) != (segment, offset):
        return None
    return body, records


def event_tuple(event: Event) -> list[Any]:
    return [event.source, list(event.key), event.version, event.deleted, event.encoded,
            event.seq]


def cursor_pair(checkpoint: Checkpoint) -> list[Any]:
    # The cursor travels as its own msgpack bytes: the batch is decoded with tuples for
    # speed, and a list cursor must come back as a list.
    pair: list[Any] = [checkpoint.source, encode_value(checkpoint.cursor)]
    if checkpoint.contact is not None:  # only when set: older records stay as they were
        pair.append(float(checkpoint.contact))
    return pair


_packers = threading.local()


def pack(obj: Any) -> bytes:
    # One reusable Packer per thread: ``packb`` builds (and frees) a Packer per call, a
    # third of the cost of framing a one-event batch. Same options, so the same bytes.
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    data: bytes = packer.pack(obj)
    return data


def batch_payload(events: Sequence[Event], checkpoint: Checkpoint | None) -> bytes:
    """A BATCH payload; the values go in as each event's precomputed canonical bytes.

    Tuples pack as msgpack arrays exactly like lists, so ``event.key`` goes in as it is
    and each event is one tuple display (no ``event_tuple`` call, no list copies).
    """
    cp = None if checkpoint is None else cursor_pair(checkpoint)
    return pack(([(e.source, e.key, e.version, e.deleted, e.encoded, e.seq)
                  for e in events], cp))


def tuples_payload(events: Iterable[EventTuple]) -> bytes:
    """A checkpoint-less batch of already-stored events (snapshots, compaction)."""
    return pack([[list(t) for t in events], None])


# -- reading -------------------------------------------------------------------------------
class FileHeader(enum.Enum):
    OK = "ok"
    SHORT = "shorter than a header"  # a file created but not yet written (crash)
    DAMAGED = "damaged header"
    FOREIGN = "not an imds-replica file"
    FUTURE = "written by a newer format version"


def check_file_header(buf: bytes | memoryview, magic: bytes) -> tuple[FileHeader, int]:
    """Classify a file header; the int is the format version found (0 if unknown)."""
    if len(buf) < FILE_HEADER_SIZE:
        return FileHeader.SHORT, 0
    found, version, _, crc = FILE_HEADER.unpack_from(buf, 0)
    if crc != crc32c(bytes(buf[:12])):
        # A magic off by a byte or two is our file, damaged, and so are zeros (a power loss
        # after the file was created); anything else is foreign.
        if any(buf[:FILE_HEADER_SIZE]) and sum(
                a != b for a, b in zip(found, magic, strict=True)) > 2:
            return FileHeader.FOREIGN, 0
        return FileHeader.DAMAGED, 0
    if found != magic:
        return FileHeader.FOREIGN, 0
    if version > FORMAT_VERSION:
        return FileHeader.FUTURE, version
    if version not in READ_VERSIONS:
        return FileHeader.DAMAGED, 0
    return FileHeader.OK, version


def unpack(payload: bytes | memoryview) -> Any:
    return msgpack.unpackb(payload, use_list=False, raw=False)


def decode_cursor(pair: Sequence[Any]) -> tuple[str, Any]:
    """``[source, cursor bytes, ...]``: elements a later release appends are ignored (the
    third is the contact: see ``decode_checkpoint``).

    Map keys may be any msgpack key: 0.1.0 accepted (and acknowledged) cursors such as
    ``{1: "a"}``, and such a log must still open with the cursor as it was written.
    """
    source, raw = pair[0], pair[1]
    return source, msgpack.unpackb(raw, raw=False, strict_map_key=False, use_list=True)


def decode_checkpoint(pair: Sequence[Any]) -> Checkpoint:
    """A stored ``[source, cursor]`` or ``[source, cursor, contact]`` pair."""
    source, cursor = decode_cursor(pair)
    contact = pair[2] if len(pair) > 2 else None
    return Checkpoint(source, cursor, None if contact is None else float(contact))


#: Rebuild an ``Event`` from a stored tuple without re-validating it (``View`` does the
#: same for the registers recovery loads; one function for both).
trusted_event = stored_event


def stored_digest(t: EventTuple) -> bytes:
    """The merge-order digest of a stored event (equal to its ``Event.digest``)."""
    return TOMBSTONE_DIGEST if t[3] else value_digest(t[4])
