from __future__ import annotations

from pathlib import Path

from imds_replica import EventLog, MemoryLog
from imds_replica.testing import EventLogContract


class TestMemoryLog(EventLogContract):
    def new_log(self, tmp_path: Path) -> EventLog:
        return MemoryLog()

    def reopen(self, log: EventLog, tmp_path: Path) -> EventLog:
        assert isinstance(log, MemoryLog)
        return MemoryLog(log.records)
