"""The public surface changes only on purpose: update these lists with the change."""

from __future__ import annotations

import imds_replica
import imds_replica.testing

PUBLIC = [
    "Checkpoint",
    "ClientError",
    "CompactionResult",
    "ConfigError",
    "ConnectOptions",
    "CorruptLogError",
    "DEFAULT_MAX_VALUE_BYTES",
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
    "StreamSource",
    "StreamSourceStatistics",
    "StorageError",
    "SubmitResult",
    "TransportError",
    "Unavailable",
    "ValidationError",
    "View",
    "ViewStatistics",
    "diff_document",
    "hlc_version",
    "merge",
    "open_replica",
    "order_key",
    "parse_document",
    "supersedes",
    "validate_batch",
    "version_wall_ms",
    "__version__",
]

TESTING = [
    "ConvergenceError",
    "ConvergenceOutcome",
    "DELETED",
    "Deliver",
    "Deliverer",
    "EventLogContract",
    "FleetConfig",
    "FleetReport",
    "Interrupt",
    "LogFactory",
    "Restart",
    "Schedule",
    "SimHost",
    "Simulation",
    "SourceContract",
    "any_events",
    "any_keys",
    "batches",
    "check_convergence",
    "check_convergence_async",
    "convergence_cases",
    "events",
    "json_values",
    "memory_logs",
    "push_delivery",
    "schedule_sets",
    "schedules",
    "simulate_fleet",
    "source_names",
    "tight_events",
    "versions",
    "vm_keys",
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
