"""Where the replica's log lives: the one place that picks the ``EventLog``.

``--data-dir`` means the durable ``FileLog`` (fsync on every group commit); without a data
directory the log is in memory by design (tests, demos without persistence).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from imds_replica import EventLog, FileLog, MemoryLog


def open_log(data_dir: Path | None, *,
             on_commit: Callable[[int, float], None] | None = None) -> EventLog:
    """``on_commit(records_in_group, fsync_seconds)`` reaches the durable log (telemetry)."""
    if data_dir is None:
        return MemoryLog()
    data_dir.mkdir(parents=True, exist_ok=True)
    return FileLog(data_dir, fsync="always", on_commit=on_commit)
