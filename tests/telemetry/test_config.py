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


def test_keys_may_be_spelled_with_dashes_like_the_servers_own() -> None:
    dashed = TelemetryConfig.from_mapping(
        {"log-dir": "/var/log/imds", "access-log": False, "queue-size": 64,
         "cold": {"max-files": 3}, "warm": {"collector-url": "http://c:8090",
                                           "sample-rate": 0.5}},
        cluster="c1", machine="m1")
    underscored = TelemetryConfig.from_mapping(
        {"log_dir": "/var/log/imds", "access_log": False, "queue_size": 64,
         "cold": {"max_files": 3}, "warm": {"collector_url": "http://c:8090",
                                           "sample_rate": 0.5}},
        cluster="c1", machine="m1")
    assert dashed == underscored
    assert (dashed.cold.max_files, dashed.warm.sample_rate, dashed.queue_size) == (3, 0.5, 64)


def test_both_spellings_of_one_key_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        TelemetryConfig.from_mapping({"warm": {"sample_rate": 0.1, "sample-rate": 0.2}})
    assert info.value.key == "telemetry.warm.sample_rate"
    assert "given twice" in str(info.value)


def test_an_unknown_key_says_did_you_mean() -> None:
    with pytest.raises(ConfigError, match="did you mean 'max-files'"):
        TelemetryConfig.from_mapping({"cold": {"max-file": 3}})


def test_to_table_is_the_effective_table_and_reads_back() -> None:
    config = TelemetryConfig.from_mapping({"log_dir": "/l", "warm": {"interval": 30}},
                                          cluster="c1", machine="m1")
    table = config.to_table()
    assert table["log-dir"] == "/l"
    assert table["warm"]["interval"] == 30.0
    assert table["cold"]["max-files"] == 20  # a default, spelled out
    assert "collector-url" not in table["warm"]  # unset: left out
    assert TelemetryConfig.from_mapping(table, cluster="c1", machine="m1") == config
