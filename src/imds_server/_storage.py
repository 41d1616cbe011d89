"""Where the replica's log lives: the one place that picks the ``EventLog``.

``--data-dir`` means the durable ``FileLog`` (imported lazily: only the serve path pays for
it). Until that implementation lands, a data directory falls back to ``MemoryLog`` with a
warning — data then lasts as long as the process. Without a data directory the log is in
memory by design (tests, demos without persistence).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from imds_replica import EventLog, MemoryLog


def open_log(data_dir: Path | None, *,
             on_commit: Callable[[int, float], None] | None = None) -> EventLog:
    """``on_commit(records_in_group, fsync_seconds)`` reaches the durable log (telemetry)."""
    if data_dir is None:
        return MemoryLog()
    try:
        from imds_replica._log import FileLog  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        print(f"imds-server: durable log not available; {data_dir} unused, data kept in "
              "memory only", file=sys.stderr)
        return MemoryLog()
    data_dir.mkdir(parents=True, exist_ok=True)
    log: EventLog = FileLog(data_dir, fsync="always", on_commit=on_commit)
    return log
