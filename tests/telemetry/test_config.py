from __future__ import annotations

from pathlib import Path

import pytest

import imds_server.telemetry as telemetry
from imds_replica import ConfigError
from imds_server.telemetry import TelemetryConfig


def test_public_surface_is_pinned() -> None:
    assert telemetry.__all__ == [
        "KNOWN_API_VERSIONS", "REPORTS", "AdminResponse", "ColdConfig", "ColdFileHandler",
        "CompactionResult", "JsonFormatter", "LogFilter", "LogPipeline", "ReplicaCollector",
        "ServerCollector",
        "Spool", "SpoolStatistics", "SpooledBatch", "Telemetry", "TelemetryConfig",
        "TelemetryMetrics", "TelemetryObserver", "TelemetryRoutes", "Uploader", "WarmBuffer",
        "WarmConfig", "bound_api_version", "compact_store", "log_files", "read_lines",
        "render_access", "run_query", "store_batch",
    ]


def test_empty_table_is_a_working_config() -> None:
    config = TelemetryConfig.from_mapping({}, cluster="c1", machine="host-7")
    assert (config.cluster, config.machine) == ("c1", "host-7")
    assert config.warm.collector_url is None
    assert config.cold.max_files >= 1


def test_full_table() -> None:
    config = TelemetryConfig.from_mapping(
        {"log_dir": "/var/log/imds", "level": "DEBUG", "access_log": False,
         "cold": {"max_file_bytes": 4096, "max_files": 3, "max_age_seconds": 60},
         "warm": {"collector_url": "http://collector:8090", "interval": 30,
                  "spool_max_bytes": 2048, "level": "warning"}},
        cluster="c1", machine="m1")
    assert config.log_dir == Path("/var/log/imds")
    assert config.level == "debug"
    assert not config.access_log
    assert (config.cold.max_file_bytes, config.cold.max_files) == (4096, 3)
    assert config.warm.interval == 30.0
    assert config.warm.level == "warning"


@pytest.mark.parametrize(("table", "kw", "key"), [
    ({"cold": {"max_files": 0}}, {}, "telemetry.cold.max_files"),
    ({"cold": {"max_file_bytes": "big"}}, {}, "telemetry.cold.max_file_bytes"),
    ({"warm": {"interval": -1}}, {}, "telemetry.warm.interval"),
    ({"warm": {"collector_url": "ftp://x"}}, {}, "telemetry.warm.collector_url"),
    ({"warm": {"bogus": 1}}, {}, "telemetry.warm.bogus"),
    ({"levle": "info"}, {}, "telemetry.levle"),
    ({"level": "loud"}, {}, "telemetry.level"),
    ({"access_log": "yes"}, {}, "telemetry.access_log"),
    ({"cold": 3}, {}, "telemetry.cold"),
    ({}, {"cluster": "has space"}, "cluster"),
    ({}, {"machine": "a/b"}, "machine"),
])
def test_invalid_settings_name_their_key(table: dict[str, object], kw: dict[str, str],
                                         key: str) -> None:
    with pytest.raises(ConfigError) as info:
        TelemetryConfig.from_mapping(table, **kw)
    assert info.value.key == key
