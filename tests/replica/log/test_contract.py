"""FileLog passes the EventLog port's conformance tests (with real fsyncs)."""

from __future__ import annotations

from pathlib import Path

from imds_replica import EventLog
from imds_replica._log import FileLog
from imds_replica.testing import EventLogContract


class TestFileLog(EventLogContract):
    def new_log(self, tmp_path: Path) -> EventLog:
        return FileLog(tmp_path / "log")

    def reopen(self, log: EventLog, tmp_path: Path) -> EventLog:
        assert isinstance(log, FileLog)
        return FileLog(log.directory)


class TestFileLogSmallSegmentsAndSnapshots(EventLogContract):
    """Same contract with rotation and snapshots on nearly every batch."""

    def new_log(self, tmp_path: Path) -> EventLog:
        return FileLog(tmp_path / "log", segment_bytes=4096, snapshot_every=3)

    def reopen(self, log: EventLog, tmp_path: Path) -> EventLog:
        assert isinstance(log, FileLog)
        return FileLog(log.directory, segment_bytes=4096, snapshot_every=3)
