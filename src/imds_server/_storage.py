"""Where the replica's log lives: the one place that picks the ``EventLog``.

``--data-dir`` means the durable ``FileLog`` (fsync on every group commit); without a data
directory the log is in memory by design (tests, demos without persistence).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from imds_replica import EventLog, FileLog, Horizons, MemoryLog


def open_log(data_dir: Path | None, *,
             on_commit: Callable[[int, float], None] | None = None,
             tombstone_retention: float = 0.0,
             now: Callable[[], float] = time.time) -> EventLog:
    """``on_commit(records_in_group, fsync_seconds)`` reaches the durable log (telemetry).
    Compaction may drop hybrid-clock tombstones older than ``tombstone_retention`` seconds
    before ``now()`` (0: keep every tombstone); counter-versioned ones are always kept."""
    if tombstone_retention < 0:
        raise ValueError(f"tombstone_retention {tombstone_retention} is negative")
    if data_dir is None:
        return MemoryLog()
    data_dir.mkdir(parents=True, exist_ok=True)
    horizon = None
    if tombstone_retention > 0:
        def horizon() -> Horizons:
            return Horizons.age(tombstone_retention, now=now())
    return FileLog(data_dir, fsync="always", on_commit=on_commit, tombstone_horizon=horizon)
