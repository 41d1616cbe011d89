"""The public surface changes only on purpose: update these lists with the change."""

from __future__ import annotations

import imds_replica
import imds_replica.testing

PUBLIC = [
    "DEFAULT_MAX_VALUE_BYTES",
    "Checkpoint",
    "ClientError",
    "ConfigError",
    "CorruptLogError",
    "DocumentInfo",
    "Event",
    "EventLog",
    "HybridClock",
    "ImdsError",
    "JSONValue",
    "Key",
    "LivelinessPolicy",
    "LivelinessTracker",
    "MemoryLog",
    "PushSource",
    "Recovery",
    "Replica",
    "ReplicaStatistics",
    "ServerError",
    "Source",
    "SourceSink",
    "SourceState",
    "SourceStatus",
    "StorageError",
    "SubmitResult",
    "Unavailable",
    "ValidationError",
    "View",
    "ViewStatistics",
    "__version__",
    "hlc_version",
    "merge",
    "open_replica",
    "order_key",
    "supersedes",
    "validate_batch",
    "version_wall_ms",
]

TESTING = [
    "EventLogContract",
]


def test_public_names_are_pinned() -> None:
    assert sorted(imds_replica.__all__) == sorted(PUBLIC)
    assert len(set(imds_replica.__all__)) == len(imds_replica.__all__)
    for name in imds_replica.__all__:
        assert hasattr(imds_replica, name), name


def test_testing_names_are_pinned() -> None:
    assert sorted(imds_replica.testing.__all__) == sorted(TESTING)
    for name in imds_replica.testing.__all__:
        assert hasattr(imds_replica.testing, name), name
