"""Stream source statistics in ``/metrics``: what ``StreamSource.statistics()`` counts.

Read at scrape time from the server's configured sources (``AdminApi.source_details``, the
same records ``GET /sources`` shows under ``"adapter"``), like the other collectors: the
source counts, this only names. One series per source (label ``source``); the cursor has a
``lane`` label (``host``: the host's own subjects, ``all``: the cluster's ``_all``).
Sources without these fields (file, poll) are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

#: ``StreamSourceStatistics`` field → (metric, kind, help); docs/telemetry.md lists them.
STREAM_FIELDS: tuple[tuple[str, str, str, str], ...] = (
    ("connected", "imds_stream_connected", "gauge",
     "1 while the stream source has a NATS connection."),
    ("pending", "imds_stream_pending_messages", "gauge",
     "Messages the host's consumers still hold for it: the lag in messages."),
    ("delivered", "imds_stream_messages_delivered", "counter",
     "Messages the consumers delivered (redeliveries included)."),
    ("events", "imds_stream_events_submitted", "counter",
     "Events submitted to the replica (what the view already held exactly is left out)."),
    ("batches", "imds_stream_batches", "counter", "Batches made durable (one per fetch)."),
    ("refused", "imds_stream_messages_refused", "counter",
     "Messages refused: malformed, not matching their subject, or refused by the replica."),
    ("resyncs", "imds_stream_resyncs", "counter",
     "Full resyncs from the stream's start (new stream, purge, unusable cursor)."),
    ("tombstoned", "imds_stream_resync_tombstones", "counter",
     "Registers tombstoned at a resync's end because they were gone from the stream."),
    ("recreations", "imds_stream_consumer_recreations", "counter",
     "Times the consumers were recreated (gaps, silence, errors, stream changes)."),
    ("gaps", "imds_stream_delivery_gaps", "counter",
     "Consumer-sequence gaps seen (lost deliveries)."),
    ("connects", "imds_stream_connects", "counter",
     "NATS connections opened (the first, then one per reconnection)."),
    ("failures", "imds_stream_failures", "counter",
     "Failed connections and calls (each followed by a backoff and a reconnection)."),
)
_LANES = (("host", "host_seq"), ("all", "all_seq"))


class StreamSourceCollector(Collector):
    """Reads the stream sources' statistics at scrape time."""

    def __init__(self, details: Callable[[], Mapping[str, Mapping[str, Any]]]) -> None:
        #: Source name → its adapter's statistics as a mapping (``AdminApi.source_details``).
        self._details = details

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        streams = {name: stats for name, stats in sorted(self._details().items())
                   if "host_seq" in stats}
        if not streams:
            return
        for field, metric, kind, help_text in STREAM_FIELDS:
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                metric, help_text, labels=["source"])
            for name, stats in streams.items():
                value = stats.get(field)
                if isinstance(value, int | float):  # bools are ints: connected → 1/0
                    family.add_metric([name], float(value))
            yield family
        cursor = GaugeMetricFamily(
            "imds_stream_cursor_sequence",
            "Stream sequence up to which a lane is applied and durable.",
            labels=["source", "lane"])
        for name, stats in streams.items():
            for lane, field in _LANES:
                value = stats.get(field)
                if isinstance(value, int):
                    cursor.add_metric([name, lane], float(value))
        yield cursor
