"""The durable per-host append log (``FileLog``) and its offline tools.

See ``docs/log-format.md`` for the on-disk format, the recovery rules and the tools.
"""

from ._compact import CompactionResult
from ._filelog import FileLog, FileLogStatistics
from ._tools import (
    CompactReport,
    RepairReport,
    StatsReport,
    VerifyReport,
    compact_log,
    dump_log,
    repair_log,
    stats_log,
    verify_log,
)

__all__ = [
    "CompactReport",
    "CompactionResult",
    "FileLog",
    "FileLogStatistics",
    "RepairReport",
    "StatsReport",
    "VerifyReport",
    "compact_log",
    "dump_log",
    "repair_log",
    "stats_log",
    "verify_log",
]
