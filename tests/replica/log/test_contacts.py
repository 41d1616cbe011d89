"""``Checkpoint.contact`` in the FileLog: persisted with its batch, carried by snapshots,
compaction and the offline tools, recovered as ``Recovery.contacts`` (finding 11.15)."""

from __future__ import annotations

from pathlib import Path

import trio

from imds_replica import Checkpoint, Event, View
from imds_replica._log import FileLog
from imds_replica._log._frame import batch_payload, cursor_pair


async def _recover(directory: Path) -> tuple[dict[str, object], dict[str, float]]:
    log = FileLog(directory)
    async with trio.open_nursery() as nursery:
        recovery = await nursery.start(log.run, View())
        nursery.cancel_scope.cancel()
    return dict(recovery.checkpoints), dict(recovery.contacts)


async def test_compaction_keeps_each_sources_contact(tmp_path: Path) -> None:
    log = FileLog(tmp_path / "log")
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, View())
        await log.append([Event("poll", ("vms", "a", "x"), 1, 1)],
                         Checkpoint("poll", "etag", contact=1234.5))
        await log.append([Event("poll", ("vms", "a", "x"), 2, 2)])
        await log.compact()
        nursery.cancel_scope.cancel()
    assert await _recover(tmp_path / "log") == ({"poll": "etag"}, {"poll": 1234.5})


def test_a_checkpoint_without_contact_is_encoded_as_before() -> None:
    """Logs written before contacts existed hold ``[source, cursor]`` pairs: a checkpoint
    without a contact must still be written exactly so."""
    assert len(cursor_pair(Checkpoint("s", 1))) == 2
    assert len(cursor_pair(Checkpoint("s", 1, contact=2.0))) == 3
    plain = batch_payload([Event("s", ("k",), 1, 1)], Checkpoint("s", 1))
    assert plain == batch_payload([Event("s", ("k",), 1, 1)], Checkpoint("s", 1, None))
