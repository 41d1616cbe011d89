from __future__ import annotations

import random

import attrs
import trio

from imds_replica import Event, LivelinessPolicy, open_replica
from imds_server.telemetry import ReplicaCollector, ServerCollector, TelemetryMetrics
from imds_server.telemetry._requests import LATENCY_BUCKETS
from tests._tools import require_tool

from .conftest import access


def value(m: TelemetryMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_requests_counted_by_route_bounded_version_and_code() -> None:
    m = TelemetryMetrics(process=False)
    for _ in range(3):
        m.observe(access())
    m.observe(access(api_version="1999-01-01", status=400, refused="bad-api-version"))
    m.observe(access(api_version=None, status=400, refused="no-metadata-header"))
    m.observe(access(status=429, refused="rate-limited"))
    m.observe(access(refused="something-new", status=403))
    r = "/metadata/instance"
    assert value(m, "imds_http_requests_total", route=r, api_version="2021-02-01",
                 code="200") == 3
    assert value(m, "imds_http_requests_total", route=r, api_version="other", code="400") == 1
    assert value(m, "imds_http_requests_total", route=r, api_version="none", code="400") == 1
    assert value(m, "imds_http_requests_refused_total", reason="rate-limited") == 1
    assert value(m, "imds_http_requests_refused_total", reason="no-metadata-header") == 1
    assert value(m, "imds_http_requests_refused_total", reason="other") == 1
    assert value(m, "imds_http_request_duration_seconds_count", route=r) == 7
    assert value(m, "imds_http_response_size_bytes_sum", route=r) == 7 * 1500


def test_unknown_api_versions_do_not_grow_memory() -> None:
    # A VM chooses the api-version string: ten thousand distinct ones are one count.
    m = TelemetryMetrics(process=False)
    for n in range(10_000):
        m.observe(access(api_version=f"v{n}", status=400))
    m.observe(access())
    assert len(m.requests._routes["/metadata/instance"].requests) == 2
    assert value(m, "imds_http_requests_total", route="/metadata/instance",
                 api_version="other", code="400") == 10_000


def test_watch_requests_are_kept_out_of_the_latency_histogram() -> None:
    m = TelemetryMetrics(process=False)
    m.observe(access(route="/metadata/scheduledevents", watch=True, seconds=30.0))
    assert value(m, "imds_http_watch_requests_total", route="/metadata/scheduledevents") == 1
    assert value(m, "imds_http_request_duration_seconds_count",
                 route="/metadata/scheduledevents") == 0


def test_route_label_set_is_capped() -> None:
    m = TelemetryMetrics(process=False)
    for n in range(100):
        m.observe(access(route=f"/r{n}"))
    routes = {s.labels["route"] for f in m.registry.collect() for s in f.samples
              if s.name == "imds_http_requests_total"}
    assert len(routes) == 65
    assert "other" in routes


def _histogram_quantile(q: float, bounds: tuple[float, ...], counts: list[int]) -> float:
    """Prometheus' histogram_quantile (linear interpolation inside the bucket)."""
    total = counts[-1]
    rank = q * total
    for i, cumulative in enumerate(counts):
        if cumulative >= rank:
            lower = bounds[i - 1] if i else 0.0
            below = counts[i - 1] if i else 0
            return lower + (bounds[i] - lower) * (rank - below) / (cumulative - below)
    raise AssertionError("unreachable")


def test_p90_is_recoverable_from_the_buckets_with_small_error() -> None:
    rng = random.Random(7)
    for median in (0.00008, 0.0002, 0.0006, 0.002):  # the service's plausible range
        m = TelemetryMetrics(process=False)
        samples = [rng.lognormvariate(0, 0.5) * median for _ in range(20_000)]
        for s in samples:
            m.observe(access(seconds=s))
        counts = [int(value(m, "imds_http_request_duration_seconds_bucket",
                            route="/metadata/instance", le=str(b)) or 0)
                  for b in LATENCY_BUCKETS]
        true_p90 = sorted(samples)[int(0.9 * len(samples))]
        estimate = _histogram_quantile(0.9, LATENCY_BUCKETS, counts)
        assert abs(estimate - true_p90) / true_p90 < 0.12, (median, estimate, true_p90)


def test_fsync_and_group_commit_from_on_commit() -> None:
    m = TelemetryMetrics(process=False)
    m.on_commit(5, 0.003)
    m.on_commit(1, 0.0002)
    assert value(m, "imds_log_group_commit_records_count") == 2
    assert value(m, "imds_log_group_commit_records_sum") == 6
    assert value(m, "imds_log_fsync_duration_seconds_bucket", le="0.004") == 2
    assert value(m, "imds_log_fsync_duration_seconds_bucket", le="0.002") == 1


@attrs.frozen
class FakeServerStatistics:
    connections_open: int = 7
    parked_watchers: int = 3
    cache_hits: int = 100
    rate_limited: int = 2  # counted by the observer instead: not exported from here


def test_server_collector_reads_statistics_at_scrape_time() -> None:
    m = TelemetryMetrics(process=False)
    stats = [FakeServerStatistics()]
    m.register(ServerCollector(lambda: stats[0]))
    assert value(m, "imds_http_connections_open") == 7
    assert value(m, "imds_watchers_parked") == 3
    assert value(m, "imds_http_cache_hits_total") == 100
    stats[0] = FakeServerStatistics(parked_watchers=0)
    assert value(m, "imds_watchers_parked") == 0


async def test_replica_collector_events_liveliness_and_replay() -> None:
    now = [1000.0]
    policies = {"tags": LivelinessPolicy(interval=10, stale_after=30, expired_after=60)}
    async with open_replica(policies=policies, clock=lambda: now[0]) as replica:
        m = TelemetryMetrics(process=False)
        m.register(ReplicaCollector(replica))
        await replica.submit([Event("tags", ("vms", "vm1", "compute", "tags"), 1, "a"),
                              Event("tags", ("vms", "vm1", "compute", "tags"), 1, "a")])
        try:
            await replica.submit([{"source": "tags", "key": [], "version": 1, "value": 1}])
        except ValueError:
            pass
        assert value(m, "imds_events_applied_total", source="tags") == 1
        assert value(m, "imds_events_received_total", source="tags") == 2
        assert value(m, "imds_events_rejected_total", source="tags") == 1
        assert value(m, "imds_view_registers") == 1
        assert value(m, "imds_replay_duration_seconds") is not None
        assert value(m, "imds_source_state", source="tags", state="live") == 1
        now[0] += 45
        assert value(m, "imds_source_state", source="tags", state="live") == 0
        assert value(m, "imds_source_state", source="tags", state="stale") == 1
        assert value(m, "imds_source_age_seconds", source="tags") == 45
        await trio.lowlevel.checkpoint()


async def test_promtool_finds_nothing_to_lint_in_our_exposition() -> None:
    promtool = require_tool("promtool", "prometheus")
    m = TelemetryMetrics(process=True)
    async with open_replica(policies={"tags": LivelinessPolicy()}) as replica:
        m.register(ReplicaCollector(replica))
        m.register(ServerCollector(FakeServerStatistics))
        await replica.submit([Event("tags", ("vms", "vm1", "compute", "tags"), 1, "a")])
        for n in range(50):
            m.observe(access(status=200 if n % 5 else 503, seconds=n * 1e-5))
        m.on_commit(3, 0.001)
        body, _ = m.exposition()
    with trio.fail_after(30):
        result = await trio.run_process([promtool, "check", "metrics"], stdin=body,
                                        capture_stdout=True, capture_stderr=True, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert b"process_resident_memory_bytes" in body
    assert b"imds_source_state{" in body
