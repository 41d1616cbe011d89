"""The hot path: one registry, request metrics updated per request, collectors at scrape time.

Per-request numbers (requests, latency, size, refusals) are counted by ``RequestCounts``
(``_requests.py``) as the observer sees them; everything the server and replica already
count lives in their ``statistics()`` records and is turned into metric families only when
Prometheus scrapes (``ServerCollector``, ``ReplicaCollector``), so the core never imports a
metrics library and nothing is counted twice. Cluster and machine are *target* labels
added by Prometheus (deploy/prometheus), never part of this exposition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from imds_replica import SourceState
from imds_server._observe import AccessRecord

from ._requests import RequestCounts
from ._versions import KNOWN_API_VERSIONS

# ``*_created`` series double the series count for no use on this service's dashboards.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064,
                 0.128, 0.256, 0.512, 1.0, 2.5)
GROUP_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)


class TelemetryMetrics:
    """The registry of one server process and the metrics telemetry itself updates."""

    def __init__(self, *, process: bool = True,
                 known_api_versions: Iterable[str] = KNOWN_API_VERSIONS) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.known_api_versions = frozenset(known_api_versions)
        self.requests = RequestCounts(self.known_api_versions)
        r.register(self.requests)
        self.fsync = Histogram(
            "imds_log_fsync_duration_seconds", "Durable log fsync latency per group commit.",
            buckets=FSYNC_BUCKETS, registry=r)
        self.group_commit = Histogram(
            "imds_log_group_commit_records", "Records made durable by one group commit.",
            buckets=GROUP_BUCKETS, registry=r)
        # The log pipeline's own health: every loss is counted, none is silent.
        self.log_lines = Counter(
            "imds_telemetry_log_lines", "Log lines accepted by the pipeline, by level.",
            ["level"], registry=r)
        self.log_dropped = Counter(
            "imds_telemetry_log_lines_dropped", "Log lines dropped, by reason.", ["reason"],
            registry=r)
        # Retention's deletions: lines written to the cold path, then deleted with their
        # file (by count at rotation, or by age), so that lines written == lines on disk +
        # lines expired.
        self.log_files_expired = Counter(
            "imds_telemetry_log_files_expired", "Compressed log files deleted by retention, "
            "by reason: max-files (rotation), max-age.", ["reason"], registry=r)
        self.log_lines_expired = Counter(
            "imds_telemetry_log_lines_expired", "Log lines in the files retention deleted, "
            "by reason (see imds_telemetry_log_files_expired).", ["reason"], registry=r)
        for reason in ("max-files", "max-age"):
            self.log_files_expired.labels(reason)
            self.log_lines_expired.labels(reason)
        for reason in ("queue-full", "cold-unwritable", "unrenderable"):
            self.log_dropped.labels(reason)
        self.log_errors = Counter(
            "imds_telemetry_log_write_errors", "Failed writes of the log pipeline, by path.",
            ["path"], registry=r)
        self.uploads = Counter(
            "imds_telemetry_upload_batches", "Warm-path batch uploads by result.", ["result"],
            registry=r)
        self.upload_last_success = Gauge(
            "imds_telemetry_upload_last_success_timestamp_seconds",
            "Unix time of the last batch the collector acknowledged.", registry=r)
        # The warm path's volume budget (every line is still in the cold file).
        self.warm_sampled_out = Counter(
            "imds_telemetry_warm_sampled_out_lines",
            "Successful access lines not uploaded: outside the sample (kept locally).",
            registry=r)
        self.warm_dropped = Counter(
            "imds_telemetry_warm_dropped_lines",
            "Lines not uploaded, by reason: throttled (per logger), over-budget (per host).",
            ["reason"], registry=r)
        self.warm_truncated = Counter(
            "imds_telemetry_warm_truncated_lines",
            "Uploaded lines cut to warm.max_line_bytes.", registry=r)
        for reason in ("throttled", "over-budget"):
            self.warm_dropped.labels(reason)
        self.spool_dropped_batches = Counter(
            "imds_telemetry_spool_dropped_batches",
            "Spooled batches deleted unsent because the spool was full (oldest first).",
            registry=r)
        self.spool_dropped_lines = Counter(
            "imds_telemetry_spool_dropped_lines", "Log lines in dropped spooled batches.",
            registry=r)
        self.spool_quarantined = Counter(
            "imds_telemetry_spool_quarantined_batches",
            "Spool files set aside (corrupt, or refused by the collector), by reason.",
            ["reason"], registry=r)
        build = Gauge("imds_build_info", "Version of the running server.", ["version"],
                      registry=r)
        from imds_replica import __version__

        build.labels(__version__).set(1)
        if process:
            prometheus_client.ProcessCollector(registry=r)
            prometheus_client.PlatformCollector(registry=r)
            prometheus_client.GCCollector(registry=r)

    def observe(self, record: AccessRecord) -> None:
        """Count one answered request (on the server's thread, like the scrape)."""
        self.requests.observe(record)

    # -- the durable log's group commit -----------------------------------------------------
    def on_commit(self, records_in_group: int, fsync_seconds: float) -> None:
        """``FileLog(on_commit=...)``: one call per group commit (any thread)."""
        self.group_commit.observe(records_in_group)
        self.fsync.observe(fsync_seconds)

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The scrape body and its content type, negotiated from an Accept header."""
        encoder, content_type = prometheus_client.exposition.choose_encoder(accept or "")
        return encoder(self.registry), content_type


#: ``ServerStatistics`` fields → (metric, kind, help). A field the record lacks is skipped,
#: so the server's record can grow without breaking the scrape. ``rate_limited`` and
#: ``unknown_callers`` are left out: the observer counts them per answered request
#: (``imds_http_requests_refused_total``), and one number must not have two names.
SERVER_FIELDS: tuple[tuple[str, str, str, str], ...] = (
    ("ready", "imds_server_ready", "gauge", "1 once the log is replayed and answers flow."),
    ("draining", "imds_server_draining", "gauge", "1 while shutting down gracefully."),
    ("connections_open", "imds_http_connections_open", "gauge",
     "Open VM-facing connections."),
    ("connections_accepted", "imds_http_connections_accepted", "counter",
     "VM-facing connections accepted."),
    ("connections_refused", "imds_http_connections_refused", "counter",
     "VM-facing connections refused (over a connection limit)."),
    ("admin_connections_open", "imds_admin_connections_open", "gauge",
     "Open admin connections."),
    ("parked_watchers", "imds_watchers_parked", "gauge",
     "wait_for_change requests parked waiting for a change."),
    ("watchers_refused", "imds_watchers_refused", "counter",
     "wait_for_change requests refused (per-VM watcher limit)."),
    ("protocol_errors", "imds_http_protocol_errors", "counter",
     "Connections closed on malformed HTTP."),
    ("timeouts", "imds_http_timeouts", "counter", "Connections closed on a timeout."),
    ("internal_errors", "imds_http_internal_errors", "counter",
     "Requests that failed inside the server (answered 500)."),
    ("cache_hits", "imds_http_cache_hits", "counter", "Answers served from the render cache."),
    ("cache_misses", "imds_http_cache_misses", "counter", "Answers rendered afresh."),
    ("cache_entries", "imds_http_cache_entries", "gauge", "Rendered answers cached."),
    ("cache_invalidations", "imds_http_cache_invalidations", "counter",
     "Cache entries dropped because their document changed."),
    # Hostile callers (issue 14): what strangers and floods cost, and what was cut off.
    ("unknown_connections_open", "imds_http_unknown_connections_open", "gauge",
     "Open VM-facing connections of unknown callers (within max-unknown-connections)."),
    ("send_timeouts", "imds_http_send_timeouts", "counter",
     "Connections closed because the client did not read its answer within send-timeout."),
    ("closed_after_refusals", "imds_http_connections_closed_after_refusals", "counter",
     "Connections closed for asking again and again after 429 (refusals-before-close)."),
    ("watchers_disconnected", "imds_watchers_disconnected", "counter",
     "Parked wait_for_change requests cancelled because the client hung up."),
    # Managed identity (/metadata/identity/...) and the token cache over the issuer.
    ("identity_requests", "imds_identity_requests", "counter",
     "Requests to /metadata/identity from known VMs."),
    ("identity_tokens", "imds_identity_tokens", "counter", "Token answers (200)."),
    ("identity_tokens_cached", "imds_identity_tokens_cached", "counter",
     "Token answers served from the cache without asking the issuer."),
    ("identity_issuer_errors", "imds_identity_issuer_errors", "counter",
     "Token requests answered 500: the issuer failed and no usable token was cached."),
    ("tokens_issued", "imds_identity_tokens_issued", "counter",
     "Tokens the issuer issued."),
    ("token_issuer_failures", "imds_identity_issuer_failures", "counter",
     "Failed calls to the issuer (unreachable, refused, malformed answer)."),
    ("tokens_served_stale", "imds_identity_tokens_served_stale", "counter",
     "Issuer failures answered with a cached token still usable."),
    ("token_cache_entries", "imds_identity_token_cache_entries", "gauge",
     "Tokens cached (per VM, identity and resource)."),
)


class ServerCollector(Collector):
    """Reads ``server.statistics()`` at scrape time."""

    def __init__(self, statistics: Callable[[], Any]) -> None:
        self._statistics = statistics

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self._statistics()
        for field, name, kind, help_text in SERVER_FIELDS:
            value = getattr(stats, field, None)
            if not isinstance(value, int | float):  # bools are ints: ready/draining → 1/0
                continue
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, help_text, value=value)
        yield from _server_labelled(stats)


def _server_labelled(stats: Any) -> Iterator[CounterMetricFamily]:
    """The ``ServerStatistics`` counters that carry a label (skipped on older records)."""
    refused = getattr(stats, "unknown_refused", None)
    if isinstance(refused, int):
        throttled = getattr(stats, "unknown_refused_throttled", 0)
        family = CounterMetricFamily(
            "imds_http_unknown_connections_refused",
            "Connections of unknown callers closed at accept, by reason: budget (the "
            "shared max-unknown-connections were in use) or throttled (over "
            "unknown-rate-limit); included in imds_http_connections_refused_total.",
            labels=["reason"])
        family.add_metric(["budget"], refused - throttled)
        family.add_metric(["throttled"], throttled)
        yield family
    by_reason = getattr(stats, "identity_refused", None)
    if isinstance(by_reason, Mapping):
        family = CounterMetricFamily(
            "imds_identity_requests_refused",
            "Identity requests answered 4xx, by reason (rate-limited: over the per-VM rate "
            "or concurrency limit; no-identity: 400 Identity not found; other: 404/405).",
            labels=["reason"])
        for reason in sorted(set(IDENTITY_REFUSALS) | set(by_reason)):
            family.add_metric([reason], by_reason.get(reason, 0))
        yield family


#: Identity refusal reasons always exported (at 0 until they happen), so that rate() works
#: from the first scrape.
IDENTITY_REFUSALS = ("rate-limited", "no-identity", "bad-request", "no-metadata-header",
                     "forwarded", "bad-api-version", "other")


class ReplicaCollector(Collector):
    """Reads ``replica.statistics()`` and ``replica.liveliness.snapshot(now)`` at scrape time.

    Must run on the replica's trio thread (liveliness snapshots update the tracker), which
    is where the admin listener renders /metrics.
    """

    def __init__(self, replica: Any) -> None:
        #: A ``Replica``, or a callable giving it (None while the server is starting).
        self._source = replica

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        replica = self._source() if callable(self._source) else self._source
        if replica is None:
            return
        stats = replica.statistics()
        for field, name, help_text in (
            ("events_applied", "imds_events_applied", "Events that changed the view."),
            ("events_received", "imds_events_received", "Events accepted into the log."),
            ("events_rejected", "imds_events_rejected",
             "Events in rejected batches, by claimed source."),
        ):
            family = CounterMetricFamily(name, help_text, labels=["source"])
            for source, count in sorted(getattr(stats, field).items()):
                family.add_metric([source], count)
            yield family
        yield CounterMetricFamily("imds_batches_submitted", "Batches accepted.",
                                  value=stats.batches_submitted)
        yield CounterMetricFamily("imds_batches_rejected", "Batches refused by validation.",
                                  value=stats.batches_rejected)
        view = stats.view
        yield GaugeMetricFamily("imds_view_registers", "Live registers in the view.",
                                value=view.registers)
        yield GaugeMetricFamily("imds_view_tombstones", "Tombstones in the view.",
                                value=view.tombstones)
        yield GaugeMetricFamily("imds_view_documents", "VM documents in the view.",
                                value=view.documents)
        yield GaugeMetricFamily("imds_replay_duration_seconds",
                                "Time the log took to recover into the view at start.",
                                value=stats.recovery.seconds)
        yield GaugeMetricFamily("imds_replay_events", "Events replayed at start.",
                                value=stats.recovery.events)
        log = stats.log
        if hasattr(log, "writable"):  # the durable log: does it take writes right now?
            yield GaugeMetricFamily("imds_log_writable",
                                    "1 while the log takes writes; 0 while it refuses them "
                                    "(disk full, failed fsync). Reads are served either way.",
                                    value=1.0 if log.writable else 0.0)
            state = GaugeMetricFamily("imds_log_state", "1 for the log's current state.",
                                      labels=["state"])
            for name in ("ok", "full", "failed"):
                state.add_metric([name], 1.0 if log.state == name else 0.0)
            yield state
            yield CounterMetricFamily("imds_log_write_failures",
                                      "Failed log writes (group commits, snapshots, "
                                      "compactions).", value=log.write_failures)
        yield from _liveliness(replica)


def _liveliness(replica: Any) -> Iterator[GaugeMetricFamily]:
    snapshot = replica.liveliness.snapshot(replica.now())
    state = GaugeMetricFamily("imds_source_state",
                              "1 for the source's current liveliness state.",
                              labels=["source", "state"])
    age = GaugeMetricFamily("imds_source_age_seconds",
                            "Seconds since the source's last successful contact.",
                            labels=["source"])
    lag = GaugeMetricFamily("imds_source_lag_seconds",
                            "Age of the newest applied version (HLC sources).",
                            labels=["source"])
    failures = GaugeMetricFamily("imds_source_consecutive_failures",
                                 "Failed attempts since the last contact.",
                                 labels=["source"])
    for name, status in sorted(snapshot.items()):
        for s in SourceState:
            state.add_metric([name, s.value], 1.0 if status.state is s else 0.0)
        if status.age is not None:
            age.add_metric([name], status.age)
        if status.lag is not None:
            lag.add_metric([name], status.lag)
        failures.add_metric([name], status.consecutive_failures)
    yield from (state, age, lag, failures)
