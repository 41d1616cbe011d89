"""Access lines rendered in batches on the loop (``TelemetryObserver.answered``): the very
bytes a line per request gave, in the order the requests were answered, every one of them
written (the last partial batch by the writer, or at stop), and drops over the queue limit
still counted in ``/metrics`` and in a line."""

from __future__ import annotations

import gzip
import json
import logging
import threading
import time
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imds_server._observe import AccessRecord
from imds_server._request import Response
from imds_server.telemetry import LogPipeline, TelemetryConfig, TelemetryMetrics, log_files
from imds_server.telemetry._jsonlog import access_line
from imds_server.telemetry._observer import RENDER_BATCH, TelemetryObserver

from .test_render import ANSWERS


class Told:
    """An observer and pipeline told of answers as the server tells them (one immutable
    ``Response`` reused per answer; ``answered`` for answers, ``request`` for refusals)."""

    def __init__(self, tmp_path: Path, table: dict[str, object] | None = None) -> None:
        self.metrics = TelemetryMetrics(process=False)
        self.pipeline = LogPipeline(TelemetryConfig.from_mapping(table or {}), tmp_path,
                                    self.metrics)
        self.observer = TelemetryObserver(self.metrics, self.pipeline)
        self._responses: dict[tuple[object, ...], Response] = {}

    def tell(self, r: AccessRecord) -> None:
        if r.refused is not None:
            self.observer.request(r)
            return
        key = (r.status, r.route, r.vm, r.api_version, r.watch)
        response = self._responses.setdefault(key, Response(
            r.status, route=r.route, vm=r.vm, api_version=r.api_version, watch=r.watch))
        prefix, _, number = r.request_id.rpartition("-")
        self.observer.answered(r.time, prefix + "-", int(number, 16), r.caller, r.method,
                               r.path + "?api-version=x", response, r.bytes, r.seconds)

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)  # type: ignore[no-any-return]


def _file_bytes(log_dir: Path) -> bytes:
    out = b""
    for path in log_files(log_dir):
        out += gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return out


def _answer(n: int, **overrides: object) -> AccessRecord:
    fields: dict[str, object] = dict(
        time=1_714_557_600.25 + n * 0.001, request_id=f"1f-2e-{n + 1:x}",
        caller=f"10.0.0.{n % 3}", vm=f"vm-{n % 2}", method="GET", route="/metadata/instance",
        path="/metadata/instance", api_version="2021-02-01", status=200, bytes=1500,
        seconds=0.0003 + n * 1e-9)
    fields.update(overrides)
    return AccessRecord(**fields)  # type: ignore[arg-type]


#: Refusals: told through ``request`` (a record), their lines queued by their own path.
REFUSALS = st.builds(lambda r, reason: attrs.evolve(r, refused=reason, status=429), ANSWERS,
                     st.sampled_from(["rate-limited", "forwarded"]))


@settings(max_examples=25, deadline=None)
@given(records=st.lists(ANSWERS | REFUSALS, min_size=1, max_size=3 * RENDER_BATCH + 5))
def test_batched_lines_are_the_per_request_lines_byte_for_byte_in_order(
        records: list[AccessRecord], tmp_path_factory: pytest.TempPathFactory) -> None:
    # Several batches, a partial one left at stop, refusals (their own path) in between:
    # the file holds exactly the lines the records render to, one per request, in order.
    tmp = tmp_path_factory.mktemp("batched")
    told = Told(tmp)
    told.pipeline.start()
    try:
        for r in records:
            told.tell(r)
    finally:
        told.pipeline.stop()
    assert told.observer.errors == 0
    assert _file_bytes(tmp) == "".join(access_line(r) for r in records).encode()


def test_the_last_partial_batch_is_written_by_the_writer_without_more_requests(
        tmp_path: Path) -> None:
    told = Told(tmp_path)
    told.pipeline.start()
    try:
        records = [_answer(n) for n in range(RENDER_BATCH + 3)]
        for r in records:
            told.tell(r)
        assert told.observer.pending() == 3  # the first batch was rendered on the spot
        deadline = time.monotonic() + 5
        while told.observer.pending() and time.monotonic() < deadline:
            time.sleep(0.01)  # the writer takes them when it wakes (every 50 ms)
        assert told.observer.pending() == 0
        assert told.pipeline.flush()
        assert _file_bytes(tmp_path).decode() == "".join(access_line(r) for r in records)
    finally:
        told.pipeline.stop()


def test_stop_writes_the_lines_still_pending(tmp_path: Path) -> None:
    told = Told(tmp_path)
    told.pipeline.start()
    records = [_answer(n) for n in range(5)]
    for r in records:
        told.tell(r)
    told.pipeline.stop()  # no flush, no wait: stop writes what is pending
    assert _file_bytes(tmp_path).decode() == "".join(access_line(r) for r in records)
    assert told.sample("imds_telemetry_log_lines_total", level="info") == 5


def test_a_pipeline_never_started_still_writes_pending_lines_at_stop(tmp_path: Path) -> None:
    told = Told(tmp_path)
    for n in range(3):
        told.tell(_answer(n))
    told.pipeline.stop()
    assert len(_file_bytes(tmp_path).splitlines()) == 3


def test_component_lines_keep_their_place_among_batched_access_lines(tmp_path: Path) -> None:
    # A line logged between two answers is written between their lines, as before.
    told = Told(tmp_path)
    told.pipeline.start()
    try:
        told.tell(_answer(0))
        logging.getLogger("imds_server.test").warning("between")
        told.tell(_answer(1))
    finally:
        told.pipeline.stop()
    written = [json.loads(line) for line in _file_bytes(tmp_path).splitlines()]
    assert [d.get("request_id", d["message"]) for d in written] == [
        "1f-2e-1", "between", "1f-2e-2"]


def test_flush_waits_for_pending_lines(tmp_path: Path) -> None:
    told = Told(tmp_path)
    told.pipeline.start()
    try:
        for n in range(7):
            told.tell(_answer(n))
        assert told.pipeline.flush()
        assert len(_file_bytes(tmp_path).splitlines()) == 7
    finally:
        told.pipeline.stop()


def test_over_the_queue_limit_batched_lines_are_dropped_counted_and_reported(
        tmp_path: Path) -> None:
    # queue_size 16, nothing draining: of the first batch (32) 16 are queued and 16
    # dropped; the 8 still pending find the queue full at stop: 24 dropped in all, the
    # newest, each counted in /metrics and in the WARNING line, never silently.
    told = Told(tmp_path, {"queue_size": 16})
    records = [_answer(n) for n in range(RENDER_BATCH + 8)]
    for r in records:
        told.tell(r)
    assert told.sample("imds_telemetry_log_lines_dropped_total", reason="queue-full") == 16
    told.pipeline.start()
    told.pipeline.stop()
    dropped = RENDER_BATCH + 8 - 16
    assert told.sample("imds_telemetry_log_lines_dropped_total",
                       reason="queue-full") == dropped
    exposition = told.metrics.exposition()[0].decode()
    assert f'imds_telemetry_log_lines_dropped_total{{reason="queue-full"}} {dropped}.0' \
        in exposition
    written = [json.loads(line) for line in _file_bytes(tmp_path).splitlines()]
    assert [d["request_id"] for d in written if d["logger"] == "imds_server.access"] == [
        r.request_id for r in records[:16]]
    reports = [d for d in written if d["logger"] == "imds_server.telemetry"]
    assert [(d["level"], d["dropped"], d["reason"]) for d in reports] == [
        ("warning", dropped, "queue-full")]
    # Every request was still counted in the metrics.
    assert told.sample("imds_http_requests_total", route="/metadata/instance",
                       api_version="2021-02-01", code="200") == len(records)


def test_lines_rendered_by_both_threads_are_each_written_once_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The writer takes what is pending whenever it wakes while the loop goes on answering
    # (here: a short writer period, and answers in bursts of fewer than a batch with the
    # GIL given up in between): one lock orders them, nothing twice, nothing lost.
    from imds_server.telemetry import _pipeline

    monkeypatch.setattr(_pipeline, "WRITER_PERIOD", 0.001)
    told = Told(tmp_path)
    told.pipeline.start()
    records = [_answer(n) for n in range(5000)]
    try:
        for i, r in enumerate(records):
            told.tell(r)
            if i % 7 == 0:
                time.sleep(0)
    finally:
        told.pipeline.stop()
    written = _file_bytes(tmp_path).decode().splitlines(keepends=True)
    assert written == [access_line(r) for r in records]


def test_the_loop_does_not_wait_for_the_writer_rendering(tmp_path: Path) -> None:
    # While another thread holds the rendering lock the loop's batch stays pending (it
    # does not block); the next answer after the lock is free renders them all.
    told = Told(tmp_path)
    lock: threading.Lock = told.observer._rendering
    with lock:
        for n in range(RENDER_BATCH + 1):
            told.tell(_answer(n))
        assert told.observer.pending() == RENDER_BATCH + 1
    told.tell(_answer(RENDER_BATCH + 1))
    assert told.observer.pending() == 0
    assert told.pipeline.queued() == RENDER_BATCH + 2  # lines (in one chunk)
    told.pipeline.stop()


def test_warm_budget_fields_come_with_batched_lines(tmp_path: Path) -> None:
    # With a warm path the queue holds the line with the fields the budget reads.
    config = {"warm": {"collector_url": "http://127.0.0.1:9", "sample_rate": 1.0}}
    told = Told(tmp_path, config)
    assert told.pipeline.budget is not None
    records = [_answer(n, status=500 if n == 3 else 200, bytes=10 + n % 2)
               for n in range(RENDER_BATCH)]
    for r in records:
        told.tell(r)
    assert list(told.pipeline.queue) == [
        (access_line(r), r.request_id, r.status, r.seconds, r.watch, None) for r in records]
    told.pipeline.stop()
    assert _file_bytes(tmp_path).decode() == "".join(access_line(r) for r in records)


def test_a_batch_that_does_not_render_is_counted(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    told = Told(tmp_path)

    def broken(items: object) -> list[str]:
        raise ValueError("a bug")

    monkeypatch.setattr(told.observer, "_render", broken)
    for n in range(RENDER_BATCH):
        told.tell(_answer(n))
    assert told.sample("imds_telemetry_log_lines_dropped_total",
                       reason="unrenderable") == RENDER_BATCH
    assert told.observer.errors == 1
    assert "telemetry observer failed" in capsys.readouterr().err
    told.pipeline.stop()
