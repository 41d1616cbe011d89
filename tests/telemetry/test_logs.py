from __future__ import annotations

import gzip
import json
import logging
import os
import time
from pathlib import Path

import pytest

from imds_replica import ClientError
from imds_server.telemetry import (
    LogFilter,
    LogPipeline,
    TelemetryConfig,
    TelemetryMetrics,
    log_files,
    read_lines,
    render_access,
)

from .conftest import access


def config(**cold: int) -> TelemetryConfig:
    return TelemetryConfig.from_mapping({"cold": cold} if cold else {}, cluster="c1",
                                        machine="m1")


def lines(log_dir: Path) -> list[dict[str, object]]:
    out = []
    for path in log_files(log_dir):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            out += [json.loads(line) for line in f]
    return out


def test_access_record_renders_every_field() -> None:
    doc = json.loads(render_access(access(refused="rate-limited", status=429)))
    assert doc["time"] == "2024-05-01T10:00:00.250000Z"
    assert {k: doc[k] for k in ("level", "logger", "vm", "caller", "route", "api_version",
                                "status", "bytes", "seconds", "request_id", "refused")} == {
        "level": "info", "logger": "imds_server.access", "vm": "vm-1", "caller": "10.0.0.4",
        "route": "/metadata/instance", "api_version": "2021-02-01", "status": 429,
        "bytes": 1500, "seconds": 0.0003, "request_id": "r-1", "refused": "rate-limited"}


def test_component_and_access_lines_reach_the_cold_file(tmp_path: Path) -> None:
    metrics = TelemetryMetrics(process=False)
    pipeline = LogPipeline(config(), tmp_path, metrics)
    pipeline.start()
    try:
        logging.getLogger("imds_server.test").info("hello %s", "there",
                                                   extra={"fields": {"vm": "vm-9"}})
        logging.getLogger("imds_server.test").debug("not at info level")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("imds_replica.x").exception("failed")
        pipeline.access(access())
    finally:
        pipeline.stop()
    docs = lines(tmp_path)
    assert [d["message"] for d in docs] == ["hello there", "failed",
                                            "GET /metadata/instance 200"]
    assert docs[0]["vm"] == "vm-9"
    assert docs[0]["level"] == "info"
    assert "RuntimeError: boom" in str(docs[1]["exc"])
    assert metrics.registry.get_sample_value("imds_telemetry_log_lines_total",
                                             {"level": "info"}) == 2


def test_rotation_compresses_and_keeps_max_files(tmp_path: Path) -> None:
    pipeline = LogPipeline(config(max_file_bytes=2048, max_files=3), tmp_path,
                           TelemetryMetrics(process=False))
    pipeline.start()
    try:
        for n in range(200):  # ~300 bytes each: ~60 KB, ~30 rotations
            pipeline.access(access(request_id=f"r-{n}"))
    finally:
        pipeline.stop()
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert names == ["imds.log", "imds.log.1.gz", "imds.log.2.gz", "imds.log.3.gz"]
    kept = [d["request_id"] for d in lines(tmp_path)]
    assert kept == [f"r-{n}" for n in range(200 - len(kept), 200)]  # newest, in order
    assert all(os.path.getsize(tmp_path / n) < 2048 for n in names)


def test_large_batches_keep_every_line_in_order_across_rotations(tmp_path: Path) -> None:
    # The cold file writes a batch in slices of WRITE_SLICE lines (and rotates inside a
    # batch): whatever the slicing, every line is kept once, in order, in plain gzip.
    from imds_server.telemetry._cold import WRITE_SLICE, ColdFileHandler

    cold = ColdFileHandler(tmp_path, config(max_file_bytes=20_000, max_files=50).cold)
    batch = [f'{{"request_id":"r-{n}","pad":"{"x" * (n % 97)}"}}\n'
             for n in range(WRITE_SLICE * 7 + 3)]
    cold.write_lines(batch[:5])
    cold.write_lines(batch[5:])
    cold.close()
    assert len(list(tmp_path.glob("*.gz"))) > 2  # rotated inside the batch
    assert [d["request_id"] for d in lines(tmp_path)] == [
        f"r-{n}" for n in range(len(batch))]
    for path in tmp_path.glob("*.gz"):  # ordinary gzip, as before
        with gzip.open(path, "rt") as f:
            assert all(json.loads(line) for line in f)


def test_retention_by_age(tmp_path: Path) -> None:
    pipeline = LogPipeline(config(max_file_bytes=1024, max_files=10, max_age_seconds=60),
                           tmp_path, TelemetryMetrics(process=False))
    pipeline.start()
    try:
        for n in range(30):
            pipeline.access(access(request_id=f"r-{n}"))
        pipeline.flush()
        old = sorted(tmp_path.glob("imds.log.*.gz"))
        assert len(old) >= 3
        past = time.time() - 3600
        for path in old[1:]:
            os.utime(path, (past, past))
        kept = gzip.decompress(old[0].read_bytes())
        assert pipeline.cold.prune() == len(old) - 1
    finally:
        pipeline.stop()
    # Only the aged files went. (Retention logs a line per deleted file, which with files
    # this small rotates again: the kept file may have been renamed meanwhile.)
    remaining = sorted(tmp_path.glob("imds.log.*.gz"))
    assert all(path.stat().st_mtime > past for path in remaining)
    assert kept in [gzip.decompress(path.read_bytes()) for path in remaining]


def test_unwritable_log_dir_is_counted_and_reported(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    metrics = TelemetryMetrics(process=False)
    pipeline = LogPipeline(config(), blocker / "logs", metrics)
    pipeline.start()  # must not raise: the server keeps serving
    try:
        for _ in range(5):
            pipeline.access(access())
        pipeline.flush()
    finally:
        pipeline.stop()
    assert metrics.registry.get_sample_value("imds_telemetry_log_write_errors_total",
                                             {"path": "cold"}) >= 2  # mkdir, then writes
    assert metrics.registry.get_sample_value("imds_telemetry_log_lines_dropped_total",
                                             {"reason": "cold-unwritable"}) == 5
    err = capsys.readouterr().err
    assert "cannot create log directory" in err
    assert "cannot write log" in err


def test_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    metrics = TelemetryMetrics(process=False)
    cfg = TelemetryConfig.from_mapping({"queue_size": 16})
    pipeline = LogPipeline(cfg, tmp_path, metrics)  # not started: nothing drains
    for _ in range(20):
        pipeline.access(access())
    assert metrics.registry.get_sample_value("imds_telemetry_log_lines_dropped_total",
                                             {"reason": "queue-full"}) == 4
    pipeline.start()
    pipeline.stop()
    written = lines(tmp_path)
    assert [x["logger"] for x in written].count("imds_server.access") == 16
    # Never silent: a line says how many were dropped and why (written once the queue had
    # room again), as well as the metric.
    reports = [x for x in written if x["logger"] == "imds_server.telemetry"]
    assert [(x["level"], x["dropped"], x["reason"]) for x in reports] == [
        ("warning", 4, "queue-full")]
    assert "queue was full" in str(reports[0]["message"])


def test_sustained_overload_reports_every_drop_in_lines(tmp_path: Path) -> None:
    # A writer that cannot keep up (here: never drains between bursts) drops, and every
    # dropped entry is in some report line's count, and in the metric.
    metrics = TelemetryMetrics(process=False)
    pipeline = LogPipeline(TelemetryConfig.from_mapping({"queue_size": 16}), tmp_path, metrics)
    for burst in range(3):
        for n in range(20 + burst):
            pipeline.access(access(request_id=f"b{burst}-{n}"))
        pipeline._drain()
        pipeline._report_drops(final=True)
    pipeline.stop()
    written = lines(tmp_path)
    dropped = sum(int(str(x["dropped"])) for x in written if "dropped" in x)
    assert dropped == 4 + 5 + 6
    assert metrics.registry.get_sample_value("imds_telemetry_log_lines_dropped_total",
                                             {"reason": "queue-full"}) == dropped
    assert [x["logger"] for x in written].count("imds_server.access") == 3 * 16


def test_retention_by_count_is_counted_and_logged(tmp_path: Path) -> None:
    # What the telemetry bench saw (858,077 lines on disk for 984,844 answers): nothing was
    # lost, the oldest files were deleted to keep max_files. That must not be silent: the
    # lines deleted are counted, so that written == on disk + expired, and logged.
    metrics = TelemetryMetrics(process=False)
    pipeline = LogPipeline(config(max_file_bytes=4096, max_files=3), tmp_path, metrics)
    pipeline.start()
    try:
        for n in range(200):
            pipeline.access(access(request_id=f"r-{n}"))
            if n % 10 == 9:
                pipeline.flush()
        pipeline.flush()
    finally:
        pipeline.stop()
    on_disk = lines(tmp_path)
    access_on_disk = sum(1 for x in on_disk if x["logger"] == "imds_server.access")
    expired = metrics.registry.get_sample_value("imds_telemetry_log_lines_expired_total",
                                                {"reason": "max-files"})
    files = metrics.registry.get_sample_value("imds_telemetry_log_files_expired_total",
                                              {"reason": "max-files"})
    assert files is not None
    assert files > 0
    info = metrics.registry.get_sample_value("imds_telemetry_log_lines_total",
                                             {"level": "info"})
    warnings = metrics.registry.get_sample_value("imds_telemetry_log_lines_total",
                                                 {"level": "warning"})
    assert info == 200
    assert expired is not None
    assert warnings is not None
    # Every line written is on disk or counted as expired (the expired ones include the
    # retention lines of earlier deletions).
    assert len(on_disk) + expired == info + warnings
    assert access_on_disk < 200
    notes = [x for x in on_disk if str(x["message"]).startswith("log retention deleted")]
    assert notes
    assert all(x["reason"] == "max-files" for x in notes)
    assert all("telemetry.cold.max_files = 3" in str(x["message"]) for x in notes)


def test_retention_knows_the_lines_of_files_from_before_a_restart(tmp_path: Path) -> None:
    from imds_server.telemetry._cold import gz_line_count

    cfg = config(max_file_bytes=4096, max_files=2)
    first = LogPipeline(cfg, tmp_path, TelemetryMetrics(process=False))
    for n in range(15):
        first.access(access(request_id=f"a-{n}"))
    first.stop()  # not started: written at stop
    before = {path.name: gz_line_count(path) for path in tmp_path.glob("imds.log.*.gz")}
    assert before
    assert all(count for count in before.values())
    metrics = TelemetryMetrics(process=False)
    second = LogPipeline(cfg, tmp_path, metrics)
    for n in range(60):
        second.access(access(request_id=f"b-{n}"))
    second.stop()
    expired = metrics.registry.get_sample_value("imds_telemetry_log_lines_expired_total",
                                                {"reason": "max-files"})
    assert len(lines(tmp_path)) + expired == 15 + 60  # the first run's lines included


def test_read_lines_filters(tmp_path: Path) -> None:
    pipeline = LogPipeline(config(max_file_bytes=1024, max_files=50), tmp_path,
                           TelemetryMetrics(process=False))
    pipeline.start()
    try:
        base = 1_714_557_600.0
        for n in range(40):
            pipeline.access(access(time=base + n, request_id=f"r-{n}",
                                   status=500 if n % 10 == 0 else 200))
    finally:
        pipeline.stop()
    assert len(log_files(tmp_path)) > 3

    def ids(**query: str) -> list[str]:
        return [json.loads(line)["request_id"]
                for line in read_lines(tmp_path, LogFilter.from_query(query))]

    assert ids() == [f"r-{n}" for n in range(40)]
    assert ids(since="2024-05-01T10:00:30Z", until=str(base + 33)) == ["r-30", "r-31", "r-32"]
    assert ids(grep=r'"status":500') == ["r-0", "r-10", "r-20", "r-30"]
    assert ids(grep=r'instance 500"', limit="2") == ["r-0", "r-10"]
    assert ids(level="error") == []
    assert ids(level="info", since=str(base + 38)) == ["r-38", "r-39"]


@pytest.mark.parametrize("query", [{"level": "loud"}, {"grep": "("}, {"limit": "-1"},
                                   {"limit": "\u00b2"}, {"since": "yesterday"},
                                   {"since": "nan"}, {"until": "1e300"},
                                   {"colour": "red"}])
def test_bad_filters_are_client_errors(query: dict[str, str]) -> None:
    with pytest.raises(ClientError):
        LogFilter.from_query(query)
