"""Stream source statistics as metric families, named in the imds_ style, lint-clean."""

from __future__ import annotations

import attrs
import trio
from prometheus_client.parser import text_string_to_metric_families

from imds_replica._stream._source import StreamSourceStatistics
from imds_server.telemetry import TelemetryMetrics
from imds_server.telemetry._stream_metrics import STREAM_FIELDS, StreamSourceCollector
from tests._tools import require_tool

STATS = StreamSourceStatistics(
    connected=True, phase="following", cursor_seq=40, pending=3, batches=5, events=37,
    refused=2, resyncs=1, recreations=4, gaps=1, connects=2, failures=1,
    consecutive_failures=0, last_error=None, host_seq=40, all_seq=12, delivered=44,
    tombstoned=6)


def _details() -> dict[str, dict[str, object]]:
    return {"fleet": attrs.asdict(STATS), "files": {"scanned": 3}}


def _scrape() -> bytes:
    metrics = TelemetryMetrics(process=False)
    metrics.register(StreamSourceCollector(_details))
    body, _ = metrics.exposition()
    return body


def test_every_statistic_has_its_series() -> None:
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(_scrape().decode())
               for s in family.samples}
    fleet = (("source", "fleet"),)
    assert samples[("imds_stream_connected", fleet)] == 1
    assert samples[("imds_stream_pending_messages", fleet)] == 3
    assert samples[("imds_stream_messages_delivered_total", fleet)] == 44
    assert samples[("imds_stream_events_submitted_total", fleet)] == 37
    assert samples[("imds_stream_messages_refused_total", fleet)] == 2
    assert samples[("imds_stream_resyncs_total", fleet)] == 1
    assert samples[("imds_stream_resync_tombstones_total", fleet)] == 6
    assert samples[("imds_stream_consumer_recreations_total", fleet)] == 4
    assert samples[("imds_stream_delivery_gaps_total", fleet)] == 1
    assert samples[("imds_stream_connects_total", fleet)] == 2
    assert samples[("imds_stream_failures_total", fleet)] == 1
    assert samples[("imds_stream_batches_total", fleet)] == 5
    assert samples[("imds_stream_cursor_sequence", (("lane", "host"), *fleet))] == 40
    assert samples[("imds_stream_cursor_sequence", (("lane", "all"), *fleet))] == 12
    # Every field named exists on the statistics record, and no other source shows up.
    fields = {f.name for f in attrs.fields(StreamSourceStatistics)}
    assert {field for field, *_ in STREAM_FIELDS} <= fields
    assert not any(labels == (("source", "files"),) for _, labels in samples)


def test_no_stream_source_no_stream_series() -> None:
    metrics = TelemetryMetrics(process=False)
    metrics.register(StreamSourceCollector(dict))
    body, _ = metrics.exposition()
    assert b"imds_stream_" not in body


async def test_promtool_finds_nothing_to_lint() -> None:
    promtool = require_tool("promtool", "prometheus")
    with trio.fail_after(30):
        result = await trio.run_process([promtool, "check", "metrics"], stdin=_scrape(),
                                        capture_stdout=True, capture_stderr=True, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
