"""``logs query``: DuckDB over a collector store and local files written by the real code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imds_server.telemetry import (
    LogPipeline,
    TelemetryConfig,
    TelemetryMetrics,
    render_access,
    run_query,
    store_batch,
)

from .conftest import access, run_command

BASE = 1_714_557_600.0  # 2024-05-01T10:00:00Z


def make_store(store: Path) -> None:
    import gzip

    for machine, offset in (("m1", 0), ("m2", 1)):
        lines = [render_access(access(time=BASE + 60 * n + offset, caller=f"10.0.0.{n % 3}",
                                      api_version=("2021-02-01", "2019-06-04", "banana")[n % 3],
                                      status=200 if n % 4 else 500, seconds=0.001 * (n + 1)))
                 for n in range(12)]
        lines.append(json.dumps({"time": "2024-05-01T11:00:00.000000Z", "level": "error",
                                 "logger": "imds_replica", "message": "fsync failed: EIO"}))
        body = gzip.compress(("\n".join(lines) + "\n").encode())
        assert store_batch(store, "c1", machine, f"{int(BASE * 1e9):020d}-{machine:0>16}", body)


def test_reports_over_a_store(tmp_path: Path) -> None:
    make_store(tmp_path)
    names, rows = run_query([tmp_path], [], report="api-versions")
    assert names == ["api_version", "answers", "errors"]
    assert sorted(rows) == [("2019-06-04", 8, 2), ("2021-02-01", 8, 2), ("banana", 8, 2)]
    _, rows = run_query([tmp_path], [], report="status", bucket="5 minutes")
    assert sum(r[2] for r in rows if r[1] == 500) == 6
    _, rows = run_query([tmp_path], [], report="latency")
    assert [(r[1], r[2]) for r in rows] == [("/metadata/instance", 24)]
    assert rows[0][3] == pytest.approx(11.0, abs=0.2)  # p90 of 1..12 ms
    _, rows = run_query([tmp_path], [], report="callers", limit=1)
    assert len(rows) == 1
    assert rows[0][2] == 8
    _, rows = run_query([tmp_path], [], report="grep", regex=r"fsync .*EIO")
    assert [(r[1], r[2]) for r in rows] == [("c1", "m1"), ("c1", "m2")]
    _, rows = run_query([tmp_path], [], sql="SELECT typeof(api_version), typeof(time), "
                        "count(DISTINCT machine) FROM logs GROUP BY ALL")
    assert rows == [("VARCHAR", "TIMESTAMP", 2)]  # api-versions are not dates


def test_local_files_and_errors(tmp_path: Path) -> None:
    pipeline = LogPipeline(TelemetryConfig.from_mapping({"cold": {"max_file_bytes": 2048}}),
                           tmp_path / "logs", TelemetryMetrics(process=False))
    pipeline.start()
    for n in range(50):
        pipeline.access(access(time=BASE + n, request_id=f"r-{n}"))
    pipeline.stop()
    _, rows = run_query([], [tmp_path / "logs"], sql="SELECT count(*), "
                        "count(DISTINCT request_id), any_value(cluster) FROM logs")
    assert rows == [(50, 50, None)]
    with pytest.raises(ValueError, match="no log files"):
        run_query([tmp_path / "empty"], [], report="status")
    with pytest.raises(ValueError, match="needs --regex"):
        run_query([], [tmp_path / "logs"], report="grep")
    with pytest.raises(ValueError, match="query failed"):
        run_query([], [tmp_path / "logs"], sql="SELECT nope FROM logs")


@pytest.mark.integration
async def test_query_command(tmp_path: Path) -> None:
    make_store(tmp_path)
    result = await run_command(["logs", "query", "--store", str(tmp_path), "--report",
                                "api-versions", "--format", "json"])
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert {r["api_version"]: r["answers"] for r in rows} == {
        "2021-02-01": 8, "2019-06-04": 8, "banana": 8}
    table = await run_command(["logs", "query", "--store", str(tmp_path), "--sql",
                               "SELECT count(*) AS n FROM logs"])
    assert table.stdout.decode().split() == ["n", "--", "26"]
    bad = await run_command(["logs", "query", "--store", str(tmp_path), "--report", "nope"])
    assert bad.returncode == 2
    assert b"unknown report" in bad.stderr
