"""imds-replica: a durable, convergent per-host replica of fleet metadata.

Events ``(source, key, version, value | deleted)`` from source adapters go into a durable
append log and merge last-writer-wins into a materialized ``View``; any two replicas that
saw the same set of events hold identical views. See ``docs/architecture.md``.
"""

from ._clock import HybridClock, hlc_version, version_wall_ms
from ._codec import JSONValue
from ._errors import (
    ClientError,
    ConfigError,
    CorruptLogError,
    ImdsError,
    LogUnavailable,
    ServerError,
    StorageError,
    Unavailable,
    ValidationError,
)
from ._event import DEFAULT_MAX_VALUE_BYTES, Event, Key, validate_batch
from ._file_source import (
    FileSource,
    FileSourceStatistics,
    ScanResult,
    diff_document,
    parse_document,
)
from ._liveliness import LivelinessPolicy, LivelinessTracker, SourceState, SourceStatus
from ._log import CompactionResult, FileLog, FileLogStatistics
from ._logport import Checkpoint, EventLog, MemoryLog, Receipt, Recovery
from ._merge import merge, order_key, supersedes
from ._poll_source import PollResult, PollSource, PollSourceStatistics
from ._push import PushSource
from ._replica import Replica, ReplicaStatistics, SubmitResult, open_replica
from ._source import Source, SourceSink
from ._stream import (
    ConnectOptions,
    Publisher,
    PublishReport,
    StreamSource,
    StreamSourceStatistics,
    TransportError,
)
from ._view import DocumentInfo, View, ViewStatistics

__version__ = "0.2.0"

__all__ = [
    "DEFAULT_MAX_VALUE_BYTES",
    "Checkpoint",
    "ClientError",
    "CompactionResult",
    "ConfigError",
    "ConnectOptions",
    "CorruptLogError",
    "DocumentInfo",
    "Event",
    "EventLog",
    "FileLog",
    "FileLogStatistics",
    "FileSource",
    "FileSourceStatistics",
    "HybridClock",
    "ImdsError",
    "JSONValue",
    "Key",
    "LivelinessPolicy",
    "LivelinessTracker",
    "LogUnavailable",
    "MemoryLog",
    "PollResult",
    "PollSource",
    "PollSourceStatistics",
    "PublishReport",
    "Publisher",
    "PushSource",
    "Receipt",
    "Recovery",
    "Replica",
    "ReplicaStatistics",
    "ScanResult",
    "ServerError",
    "Source",
    "SourceSink",
    "SourceState",
    "SourceStatus",
    "StorageError",
    "StreamSource",
    "StreamSourceStatistics",
    "SubmitResult",
    "TransportError",
    "Unavailable",
    "ValidationError",
    "View",
    "ViewStatistics",
    "__version__",
    "diff_document",
    "hlc_version",
    "merge",
    "open_replica",
    "order_key",
    "parse_document",
    "supersedes",
    "validate_batch",
    "version_wall_ms",
]
