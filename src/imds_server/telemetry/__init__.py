"""Telemetry of the metadata server: metrics, structured logs and their three paths, the
dial-tone probe, the warm-path collector and fleet log queries. See ``docs/telemetry.md``.

The server needs ``Telemetry`` and ``TelemetryConfig``; the rest is public
for tools and tests that use one piece on its own.
"""

from ._admin import AdminResponse, TelemetryRoutes
from ._cold import ColdFileHandler, LogFilter, log_files, read_lines
from ._collector import store_batch
from ._compact import CompactionResult, compact_store
from ._config import ColdConfig, TelemetryConfig, WarmConfig
from ._jsonlog import JsonFormatter, render_access
from ._metrics import ReplicaCollector, ServerCollector, TelemetryMetrics
from ._observer import TelemetryObserver
from ._pipeline import LogPipeline
from ._query import REPORTS, run_query
from ._spool import Spool, SpooledBatch, SpoolStatistics
from ._telemetry import Telemetry
from ._versions import KNOWN_API_VERSIONS, bound_api_version
from ._warm import Uploader, WarmBuffer

__all__ = [
    "KNOWN_API_VERSIONS",
    "REPORTS",
    "AdminResponse",
    "ColdConfig",
    "ColdFileHandler",
    "CompactionResult",
    "JsonFormatter",
    "LogFilter",
    "LogPipeline",
    "ReplicaCollector",
    "ServerCollector",
    "Spool",
    "SpoolStatistics",
    "SpooledBatch",
    "Telemetry",
    "TelemetryConfig",
    "TelemetryMetrics",
    "TelemetryObserver",
    "TelemetryRoutes",
    "Uploader",
    "WarmBuffer",
    "WarmConfig",
    "bound_api_version",
    "compact_store",
    "log_files",
    "read_lines",
    "render_access",
    "run_query",
    "store_batch",
]
