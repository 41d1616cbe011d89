"""Replay's fast path (fold to winners, ``View.load_stored`` of stored tuples, Events built
on first read) gives the view the slow path gives: every stored event applied in log order
with ``View.apply``, one by one.

The logs are adversarial: duplicates, tombstones, version ties and out-of-order versions,
several sources, keys above document depth, a format 1 segment (as 0.1.0 wrote it)
followed by format 2 ones after the upgrade, snapshots taken along the way, and a
compaction; then further writes over the replayed (not yet built) registers.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from imds_replica import Checkpoint, CorruptLogError, Event, Horizons, View
from imds_replica._liveliness import newest_versions
from imds_replica._log import FileLog
from imds_replica._log._frame import (
    GROUP_SIZE,
    SEGMENT_MAGIC,
    RecordType,
    batch_payload,
    file_header,
    frame,
    unpack,
)
from imds_replica._log._replay import recover_directory
from imds_replica._log._segment import FORMAT_NAME, META_NAME, segment_name
from imds_replica._log._tools import _segment_scans

from .._helpers import view_of
from ._helpers import append_group

KEYS = [("vms", "v1", "compute", "name"), ("vms", "v1", "compute"), ("vms", "v1"),
        ("vms", "v2", "tags", "0"), ("vms", "v2", "tags"), ("vms", "v3", "x"),
        ("callers", "10.0.0.1"), ("k",)]
events = st.builds(
    lambda source, key, version, value, seq: Event(
        source, key, version, None if value == "DELETE" else value,
        deleted=value == "DELETE", seq=seq),
    st.sampled_from(["a", "b", "fabric"]),
    st.sampled_from(KEYS),
    st.integers(0, 6),
    st.sampled_from([1, "DELETE", "1", [1, 2], {"a": 1}, None, 1.5, "DELETE"]),
    st.none() | st.integers(0, 3),
)
batch = st.lists(events, min_size=1, max_size=5).flatmap(
    # duplicates: sometimes the batch again, whole, inside itself
    lambda b: st.sampled_from([b, b + b]))
plans = st.tuples(
    st.lists(batch, max_size=6),  # format 1 segment (0.1.0)
    st.lists(st.tuples(batch, st.sampled_from(["", "snapshot", "compact"])), max_size=10),
    st.lists(batch, max_size=4),  # written after the reopen, over replayed registers
)


def _write_v1(directory: Path, batches: list[list[Event]]) -> None:
    directory.mkdir(parents=True)
    (directory / META_NAME).write_text(json.dumps(
        {"format": FORMAT_NAME, "version": 1, "generation": 1}) + "\n")
    (directory / segment_name(1, 1)).write_bytes(file_header(SEGMENT_MAGIC, 1) + b"".join(
        frame(RecordType.BATCH, batch_payload(b, Checkpoint("a", i))) for i, b in enumerate(
            batches)))


def _stored_events(directory: Path) -> list[Event]:
    """Every event of every record of the log's generation, in log order, each built and
    validated from scratch (``Event(...)``); snapshots are not read."""
    out = []
    for _, scan in _segment_scans(directory, 2**26):
        for _, rtype, payload in scan.records:
            if rtype == RecordType.BATCH:
                for source, key, version, deleted, encoded, seq in unpack(payload)[0]:
                    out.append(Event(source, key, version,
                                     None if deleted else msgpack.unpackb(encoded),
                                     deleted=deleted, seq=seq))
    return out


def _observed(view: View) -> dict[str, Any]:
    docs = sorted({e.key[:view.document_depth] for e in view.registers()})
    stats = view.statistics()
    return {
        "digest": view.digest(),
        "content": view.content_digest(),
        "registers": [(e.key, e.version, e.source, e.deleted, e.encoded, e.seq, e.value,
                       e.digest) for e in view.registers()],
        "counts": (stats.registers, stats.tombstones, stats.documents),
        "documents": {d: view.document(d) for d in docs},
        "infos": {d: (i.etag, i.sources, i.max_version) for d in docs
                  if (i := view.document_info(d)) is not None},
        "max_version": {p: view.max_version(p) for p in [("vms",), ("vms", "v1"), ("k",)]},
    }


async def _run(directory: Path, v1: list[list[Event]],
               v2: list[tuple[list[Event], str]], after: list[list[Event]]) -> None:
    _write_v1(directory, v1)
    live = View()
    log = FileLog(directory, fsync="none", snapshot_every=None, compact_ratio=None)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, live)
        for events_, then in v2:
            await log.append(events_)
            if then == "snapshot":
                await log.snapshot()
            elif then == "compact":
                await log.compact()
        nursery.cancel_scope.cancel()
    slow = view_of(*_stored_events(directory))
    assert _observed(slow) == _observed(live)

    # ``plain`` (on a copy) has every register read, so built, before ``after`` is written
    # over it; ``fast`` has ``after`` written over registers still stored tuples.
    shutil.copytree(directory, directory.with_name("copy"))
    fast, plain = View(), View()
    for view, where in ((plain, directory.with_name("copy")), (fast, directory)):
        log = FileLog(where, fsync="none", snapshot_every=None, compact_ratio=None)
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run, view)
            if view is plain:
                assert _observed(plain) == _observed(slow)
            else:
                assert fast.newest_versions() == newest_versions(slow.registers())
            for events_ in after:
                await log.append(events_)
            nursery.cancel_scope.cancel()
    assert _observed(fast) == _observed(plain)

    # Without snapshots: the whole log folded from the first record, loaded the old way
    # (Events built up front, ``View.load``) and the new way agree register for register.
    full = recover_directory(directory, writable=False, fsync=False, max_record=2**26,
                             use_snapshots=False)
    old_way, new_way = View(), View()
    old_way.load(full.reducer.winners())
    new_way.load_stored(full.reducer.take_winners())
    assert new_way.digest() == old_way.digest()
    assert new_way.statistics() == old_way.statistics()
    horizons = Horizons(hlc=3, sources={"a": 3, "b": 3, "fabric": 3})
    assert new_way.compact(horizons) == old_way.compact(horizons)
    assert _observed(new_way) == _observed(old_way)


@settings(max_examples=60)
@given(plans)
def test_fast_replay_equals_applying_every_stored_event(
        plan: tuple[list[list[Event]], list[tuple[list[Event], str]], list[list[Event]]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(_run, Path(tmp) / "log", *plan)


def _batch_bytes(source: bytes, version: Any, key: list[str]) -> bytes:
    """A BATCH payload of one event, its source given as the raw bytes of a msgpack str
    (so it can be invalid UTF-8)."""
    body = msgpack.packb([[["\x00", key, version, False, msgpack.packb(1), None]], None],
                         use_bin_type=True)
    return body.replace(b"\xa1\x00", bytes([0xa0 | len(source)]) + source, 1)


@pytest.mark.parametrize("bad", [
    pytest.param(_batch_bytes(b"\xff\xfe", 1, ["vms", "x", "k"]), id="invalid-utf8"),
    pytest.param(_batch_bytes(b"a", "1", ["vms", "x", "k"]), id="version-not-an-int"),
])
def test_a_record_every_later_one_supersedes_is_still_refused_if_malformed(
        tmp_path: Path, bad: bytes) -> None:
    """Replay drops a record whose every event loses to a later record of the same keys
    without folding it, but it still decodes it: a malformed one (its checksum holds) is
    refused at its place, not skipped."""
    directory = tmp_path / "log"
    trio.run(_append_and_close, directory, [Event("a", ("vms", "y", "k"), 1, 1)])
    segment = directory / segment_name(1, 1)
    at = append_group(segment, frame(RecordType.BATCH, bad)) + GROUP_SIZE
    later = _batch_bytes(b"a", 50, ["vms", "x", "k"])
    for _ in range(3):
        append_group(segment, frame(RecordType.BATCH, later))
    with pytest.raises(CorruptLogError, match="unreadable payload") as info:
        recover_directory(directory, writable=False, fsync=False, max_record=2**26)
    assert (info.value.segment, info.value.offset) == (segment.name, at)
    # The well-formed twin of the bad record is dropped the same way and opens.
    segment.write_bytes(segment.read_bytes()[:at - GROUP_SIZE])
    append_group(segment, frame(RecordType.BATCH, _batch_bytes(b"a", 1, ["vms", "x", "k"])))
    append_group(segment, frame(RecordType.BATCH, later))
    rec = recover_directory(directory, writable=False, fsync=False, max_record=2**26)
    assert rec.reducer.best[("vms", "x", "k")][2] == 50
    assert rec.reducer.events == 3


def test_a_kept_record_with_a_version_that_is_not_a_number_is_refused_at_its_place(
        tmp_path: Path) -> None:
    """A record no later one supersedes is folded event by event at the end of its
    segment: a wrong type there is refused naming that record, not raised bare."""
    directory = tmp_path / "log"
    trio.run(_append_and_close, directory, [Event("a", ("vms", "y", "k"), 1, 1)])
    segment = directory / segment_name(1, 1)
    at = append_group(segment, frame(RecordType.BATCH,
                                     _batch_bytes(b"a", "7", ["vms", "z", "k"]))) + GROUP_SIZE
    append_group(segment, frame(RecordType.BATCH, _batch_bytes(b"a", 50, ["vms", "x", "k"])))
    with pytest.raises(CorruptLogError, match="unreadable payload") as info:
        recover_directory(directory, writable=False, fsync=False, max_record=2**26)
    assert (info.value.segment, info.value.offset) == (segment.name, at)


async def _append_and_close(directory: Path, events_: list[Event]) -> None:
    log = FileLog(directory, fsync="none", snapshot_every=None, compact_ratio=None)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, View())
        await log.append(events_)
        nursery.cancel_scope.cancel()
