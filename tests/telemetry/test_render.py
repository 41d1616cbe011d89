"""Access lines: valid JSON for any client input, the same from the writer's batch renderer
as from ``render_access``, and a queue that neither loses nor leaks."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imds_server._observe import AccessRecord
from imds_server.telemetry import LogPipeline, TelemetryConfig, TelemetryMetrics, render_access
from imds_server.telemetry._jsonlog import (
    ACCESS_FIELDS,
    SEGMENT_CACHE_ENTRIES,
    AccessRenderer,
    Line,
    access_line,
    iso_time,
    queued,
)

from .conftest import access

#: Any text a client (path, api-version) or a source (vm) could bring: quotes, backslashes,
#: control characters, non-ASCII, lone surrogates.
TEXT = st.text(max_size=40)
RECORDS = st.builds(
    AccessRecord,
    time=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    request_id=TEXT, caller=TEXT, vm=st.none() | TEXT, method=TEXT, route=TEXT, path=TEXT,
    api_version=st.none() | TEXT, status=st.integers(100, 999),
    bytes=st.integers(0, 2**40),
    seconds=st.floats(min_value=0, max_value=1e5, allow_nan=False),
    refused=st.none() | TEXT, watch=st.booleans())


def expected(r: AccessRecord) -> dict[str, object]:
    return {"time": iso_time(r.time), "level": "info", "logger": "imds_server.access",
            "message": f"{r.method} {r.path} {r.status}", "request_id": r.request_id,
            "vm": r.vm, "caller": r.caller, "method": r.method, "route": r.route,
            "path": r.path, "api_version": r.api_version, "status": r.status,
            "bytes": r.bytes, "seconds": round(r.seconds, 7), "refused": r.refused,
            "watch": r.watch}


@settings(max_examples=300, deadline=None)
@given(RECORDS)
def test_every_line_parses_back_to_its_fields(record: AccessRecord) -> None:
    line = render_access(record)
    assert line.isascii()  # one line, whatever the client sent
    assert "\n" not in line
    doc = json.loads(line)
    assert doc == expected(record)
    assert list(doc) == ["time", "level", "logger", "message", *ACCESS_FIELDS]


@settings(max_examples=100, deadline=None)
@given(st.lists(RECORDS, max_size=20), st.data())
def test_batch_renderer_matches_render_access(records: list[AccessRecord],
                                              data: st.DataObject) -> None:
    renderer = AccessRenderer()
    batch: list[object] = [queued(r) for r in records]
    # component lines anywhere in the batch pass through with their level
    at = data.draw(st.integers(0, len(batch)))
    batch.insert(at, Line(30, '{"x":1}\n'))
    for _ in range(2):  # the second time from the segment cache
        lines, levels, count = renderer.render(batch)  # type: ignore[arg-type]
        want = [access_line(r) for r in records]
        want.insert(at, '{"x":1}\n')
        assert lines == want
        assert levels == [20] * at + [30] + [20] * (len(records) - at)
        assert count == len(records)


def test_segment_cache_is_bounded_whatever_the_paths() -> None:
    renderer = AccessRenderer()
    records = [access(path=f"/metadata/{n}") for n in range(3 * SEGMENT_CACHE_ENTRIES)]
    records.append(access(path="/" + "x" * 100_000))  # rendered, never cached
    lines, levels, count = renderer.render([queued(r) for r in records])
    assert lines == [access_line(r) for r in records]
    assert levels is None
    assert count == len(records)
    assert len(renderer._segments) <= SEGMENT_CACHE_ENTRIES
    assert all(len(str(key[1])) < 1000 for key in renderer._segments)  # key[1]: path


def test_an_unrenderable_record_is_dropped_and_counted(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    metrics = TelemetryMetrics(process=False)
    pipeline = LogPipeline(TelemetryConfig.from_mapping({}), tmp_path, metrics)
    pipeline.start()
    try:
        pipeline.access(access(request_id="before"))
        pipeline.access(access(request_id="bad", status="two hundred"))
        pipeline.access(access(request_id="after"))
    finally:
        pipeline.stop()
    ids = [json.loads(x)["request_id"] for x in (tmp_path / "imds.log").read_text().splitlines()]
    assert ids == ["before", "after"]
    assert metrics.registry.get_sample_value("imds_telemetry_log_lines_dropped_total",
                                             {"reason": "unrenderable"}) == 1
    assert metrics.registry.get_sample_value("imds_telemetry_log_lines_total",
                                             {"level": "info"}) == 2
    assert "cannot render access record" in capsys.readouterr().err


def test_queued_records_leave_the_garbage_collector_alone(tmp_path: Path) -> None:
    # Why the queue holds tuples, not AccessRecords: records waiting for the writer were
    # promoted through the GC generations and set off full collections on the event loop.
    pipeline = LogPipeline(TelemetryConfig.from_mapping({}), tmp_path,
                           TelemetryMetrics(process=False))  # not started: entries wait
    pipeline.access(access())
    gc.collect(0)
    assert not any(gc.is_tracked(entry) for entry in pipeline.queue)
    pipeline.stop()


ANSWERS = st.builds(
    AccessRecord,
    time=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    # The server's ids: a prefix, then a number in hex (no leading zeros).
    request_id=st.from_regex(r"[0-9a-f]{1,8}-[0-9a-f]{1,8}-(0|[1-9a-f][0-9a-f]{0,7})",
                             fullmatch=True),
    caller=TEXT, vm=st.none() | TEXT, method=TEXT, route=TEXT,
    path=TEXT.filter(lambda p: "?" not in p),  # a request's path: its target before "?"
    api_version=st.none() | st.sampled_from(["2021-02-01", "2017-08-01"]) | TEXT,
    status=st.integers(100, 999), bytes=st.integers(0, 2**40),
    seconds=st.floats(min_value=0, max_value=1e5, allow_nan=False), watch=st.booleans())


def _told(records: list[AccessRecord], fast: bool,
          tmp_path: Path) -> tuple[list[str], bytes]:
    """The lines and the metrics exposition after telling an observer of ``records``."""
    from imds_server._request import Response
    from imds_server.telemetry import TelemetryObserver

    metrics = TelemetryMetrics(process=False)
    pipeline = LogPipeline(TelemetryConfig.from_mapping({}), tmp_path, metrics)
    observer = TelemetryObserver(metrics, pipeline)
    responses: dict[tuple[object, ...], Response] = {}
    for r in records:
        if not fast:
            observer.request(r)
            continue
        key = (r.status, r.route, r.vm, r.api_version, r.watch)
        response = responses.setdefault(key, Response(  # reused, as the server does
            r.status, route=r.route, vm=r.vm, api_version=r.api_version, watch=r.watch))
        target = r.path + ("?api-version=x" if r.status % 2 else "")  # the server's
        prefix, _, number = r.request_id.rpartition("-")
        observer.answered(r.time, prefix + "-", int(number, 16), r.caller, r.method, target,
                          response, r.bytes, r.seconds)
    assert observer.errors == 0
    observer.queue_pending()  # the last answers' lines wait for a batch (or the writer)
    lines, _, _ = AccessRenderer().render(list(pipeline.queue))
    text = "".join(lines)  # the loop queues its lines in chunks of several
    return [line + "\n" for line in text.split("\n")[:-1]], metrics.exposition()[0]


@settings(max_examples=100, deadline=None)
@given(records=st.lists(ANSWERS, max_size=12), repeat=st.integers(1, 3))
def test_answered_counts_and_renders_as_the_record_would(
        records: list[AccessRecord], repeat: int, tmp_path_factory: pytest.TempPathFactory
        ) -> None:
    # The server's cheap path (no AccessRecord built; segments kept per response) must
    # give the very lines and metrics that the record gives.
    records = records * repeat  # the second time from the observer's table
    tmp = tmp_path_factory.mktemp("answered")
    fast_lines, fast_metrics = _told(records, True, tmp / "fast")
    lines, exposition = _told(records, False, tmp / "record")
    assert fast_lines == lines == [access_line(r) for r in records]
    assert fast_metrics == exposition


def test_answered_counts_survive_the_observer_table_being_refilled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The observer counts an answer's requests in its table entry and adds them to the
    # metrics at scrape time: an entry dropped (the table full, or another caller of the
    # same response) must hand its counts over first.
    from imds_server.telemetry import _observer

    monkeypatch.setattr(_observer, "MAX_ANSWERS", 2)
    records = [AccessRecord(time=1e9 + n, request_id=f"a-b-{n + 1:x}",
                            caller=f"10.0.0.{n % 3}", vm=f"vm-{n % 5}", method="GET",
                            route="/metadata/instance", path=f"/metadata/instance/{n % 5}",
                            api_version="2021-02-01", status=200, bytes=100 + n % 5,
                            seconds=0.0001 * (n % 7)) for n in range(40)]
    fast_lines, fast_metrics = _told(records, True, tmp_path / "fast")
    lines, exposition = _told(records, False, tmp_path / "record")
    assert fast_lines == lines
    assert fast_metrics == exposition
    assert b'imds_http_requests_total{api_version="2021-02-01",code="200",' \
        b'route="/metadata/instance"} 40.0' in fast_metrics
