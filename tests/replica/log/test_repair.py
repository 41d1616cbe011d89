"""Finding 14: ``repair`` keeps the readable events after mid-log damage (the merge is
order-independent, so they can go back in any order) but rolls back every cursor recorded
after the damage (a source must redeliver the lost batch); and (finding 3) it handles a
record whose checksum holds but whose payload does not decode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imds_replica import Checkpoint, Event
from imds_replica._log import repair_log, verify_log
from imds_replica._log._frame import RecordType, batch_payload, frame

from ._helpers import Batch, append_group, make_batches, reopen, replay_view, write_log

MARKER = "MARKER-lost-batch"


def _cursors(batches: list[Batch]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for _, cp in batches:
        if cp is not None:
            out[cp.source] = cp.cursor
    return out


async def test_repair_keeps_readable_events_and_rolls_back_later_cursors(
        tmp_path: Path) -> None:
    directory = tmp_path / "log"
    before = make_batches(600, seed=21)
    lost: Batch = ([Event("x", ("vms", "lost", "compute", "marker"), 10**9, MARKER)],
                   Checkpoint("x", 1))
    after = make_batches(600, seed=22)
    after = [([Event("late", e.key, 10**6 + e.version, e.value) for e in events], cp)
             for events, cp in after]  # newer than everything before: they win on merge
    await write_log(directory, [*before, lost, *after], segment_bytes=4096,
                    snapshot_every=None)
    [segment] = [p for p in directory.glob("*.seg") if MARKER.encode() in p.read_bytes()]
    raw = bytearray(segment.read_bytes())
    raw[raw.index(MARKER.encode()) + 3] ^= 0x01
    segment.write_bytes(bytes(raw))
    assert not verify_log(directory).ok

    report = repair_log(directory)
    assert report.damage is not None
    assert report.salvaged_events > 500
    assert report.cursors_rolled_back > 0
    assert report.cursors == _cursors(before)  # none recorded after the damage
    assert verify_log(directory).ok
    view, recovery = await reopen(directory)
    # Everything readable is back, in whatever order: the same view as never losing it...
    assert view.digest() == replay_view([*before, *after]).digest()
    assert view.get(("vms", "lost", "compute", "marker")) is None  # ...but the lost batch
    assert dict(recovery.checkpoints) == _cursors(before)  # which sources will redeliver
    assert any(p.name.startswith(segment.name) for p in (directory / "damaged").rglob("*"))
    assert repair_log(directory).damage is None


async def test_repair_handles_a_record_that_does_not_decode(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    before = make_batches(100, seed=23)
    await write_log(directory, before)
    [segment] = directory.glob("*.seg")
    append_group(segment, frame(RecordType.BATCH, b"\xc1"))  # good checksum, not msgpack
    after = [([Event("late", ("vms", "v", "compute", str(i)), 10**6 + i, i)],
              Checkpoint("late", i)) for i in range(30)]
    for events, cp in after:  # written on, as a replica that did not notice would have
        append_group(segment, frame(RecordType.BATCH, batch_payload(events, cp)))
    report = repair_log(directory)
    assert report.damage is not None
    assert "unreadable payload" in report.damage
    assert report.salvaged_events == 30
    view, recovery = await reopen(directory)
    assert view.digest() == replay_view([*before, *after]).digest()
    assert "late" not in recovery.checkpoints
    assert verify_log(directory).ok
