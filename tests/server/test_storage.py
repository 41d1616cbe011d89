"""``open_log``: the server's durable log and its ``tombstone-retention``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from imds_replica import Event, FileLog, MemoryLog, hlc_version, open_replica
from imds_server import open_log

DAY = 24 * 3600.0
NOW = 1_800_000_000.0  # the injected wall clock, Unix seconds


def _at(days_ago: float, counter: int = 0) -> int:
    return hlc_version(int((NOW - days_ago * DAY) * 1000)) + counter


async def _write_and_compact(directory: Path,
                             retention: float) -> tuple[int, dict[str, Any], int]:
    log = open_log(directory, tombstone_retention=retention, now=lambda: NOW)
    assert isinstance(log, FileLog)
    async with open_replica(log) as replica:
        await replica.submit([
            Event("fabric", ("vms", "old", "compute", "name"), _at(30), "o"),
            Event("fabric", ("vms", "new", "compute", "name"), _at(2), "n"),
            Event("tags", ("vms", "old", "compute", "tag"), 5, "t"),  # counter space
        ])
        await replica.submit([
            Event("fabric", ("vms", "old", "compute", "name"), _at(29), deleted=True),
            Event("fabric", ("vms", "new", "compute", "name"), _at(1), deleted=True),
            Event("tags", ("vms", "old", "compute", "tag"), 6, deleted=True),
        ])
        result = await log.compact()
        # A late redelivery of the write the dropped tombstone deleted stays deleted.
        await replica.submit(
            [Event("fabric", ("vms", "old", "compute", "name"), _at(30), "o")])
        documents = {vm: replica.view.document(("vms", vm)) for vm in ("old", "new")}
        return result.tombstones_dropped, documents, replica.view.statistics().floor_noops


async def test_tombstones_older_than_the_retention_are_dropped_and_stay_deleted(
        tmp_path: Path) -> None:
    dropped, documents, floor_noops = await _write_and_compact(tmp_path / "log", 7 * DAY)
    # The 29-day-old deletion goes; the 1-day-old one and the counter-versioned one stay.
    assert dropped == 1
    assert floor_noops == 1
    assert documents == {"old": None, "new": None}  # every field of both VMs is deleted
    async with open_replica(FileLog(tmp_path / "log")) as replica:  # and after a restart
        assert replica.view.get(("vms", "old", "compute", "name")) is None
        tombstones = {e.key: e.source for e in replica.view.registers() if e.deleted}
    assert tombstones == {("vms", "new", "compute", "name"): "fabric",
                          ("vms", "old", "compute", "tag"): "tags"}


async def test_a_retention_of_zero_keeps_every_tombstone(tmp_path: Path) -> None:
    dropped, _documents, _ = await _write_and_compact(tmp_path / "log", 0)
    assert dropped == 0


def test_no_data_directory_is_a_memory_log_and_a_negative_retention_is_refused() -> None:
    assert isinstance(open_log(None, tombstone_retention=DAY), MemoryLog)
    with pytest.raises(ValueError, match="negative"):
        open_log(None, tombstone_retention=-1)
