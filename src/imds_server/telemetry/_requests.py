"""Per-request metrics: plain counts on the request path, metric families at scrape time.

The observer runs on the server's one trio thread, and so does the scrape, so the counts
need no lock. prometheus_client's ``Counter``/``Histogram`` take a lock and walk every bucket
per call: four of them cost ~4 µs a request, here they cost well under one (measured in
bench/bench_telemetry.py). The exposition is still prometheus_client's, from the families
this collector yields.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from imds_server._observe import AccessRecord

from ._versions import bound_api_version

#: Answers from the in-memory view take ~50-500 µs; buckets are dense there so
#: histogram_quantile's linear interpolation recovers p90 within a few percent, and sparse
#: above (slow answers only need to be seen, not measured finely).
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.0015,
    0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
)
SIZE_BUCKETS = (64.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 65536.0,
                262144.0, 1048576.0)
#: Refusal reasons the server reports (see ``AccessRecord.refused``); others are "other".
REFUSAL_REASONS = frozenset({
    "no-metadata-header", "forwarded", "unknown-caller", "rate-limited", "bad-api-version",
    "bad-request", "starting",
})
#: Routes are templated by the server; this caps the label set should that ever break.
MAX_ROUTES = 64
#: The key of every api-version the server does not know (the label ``bound_api_version``
#: gives it at scrape time: ``other``).
OTHER = "other"


class _Histogram:
    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.buckets, strict=True):
            running += count
            out.append((floatToGoString(bound), float(running)))  # type: ignore[no-untyped-call]
        return out


class _Route:
    __slots__ = ("duration", "name", "requests", "size", "watches")

    def __init__(self, name: str) -> None:
        self.name = name
        #: (api_version: a known one, None, or ``OTHER``; status) → answered requests
        self.requests: dict[tuple[str | None, int], int] = {}
        self.duration = _Histogram(LATENCY_BUCKETS)
        self.size = _Histogram(SIZE_BUCKETS)
        self.watches = 0


class Slot:
    """Where one kind of answer is counted (a route, a bounded api-version, a status,
    watch or not), bound once: ``RequestCounts.count(slot, seconds, size)`` then does no
    lookup but the count's own. The server's answers repeat (one ``Response`` per answer
    and second), so the observer keeps a slot per answer (``_observer.py``)."""

    __slots__ = ("key", "requests", "route", "watch")

    def __init__(self, route: _Route, key: tuple[str | None, int], watch: bool) -> None:
        self.route = route
        self.requests = route.requests
        self.key = key
        self.watch = watch


class Tally:
    """Answers of one slot and one body size, counted by the observer with one increment
    each: their count, size histogram and watches reach the slot when ``RequestCounts``
    folds them (before every collect, and when the observer drops the tally). The duration
    histogram (``duration``: None for watches) is counted per request, in order, as
    ``count`` does, so the exposition is the same as if each request had been counted."""

    __slots__ = ("duration", "n", "size", "slot")

    def __init__(self, slot: Slot, size: int) -> None:
        self.slot = slot
        self.size = size
        self.n = 0
        self.duration = None if slot.watch else slot.route.duration


class RequestCounts(Collector):
    """Counts answered requests; register it in the registry that is scraped."""

    def __init__(self, known_api_versions: Iterable[str]) -> None:
        self._known = frozenset(known_api_versions)
        self._routes: dict[str, _Route] = {}
        self._refused: dict[str, int] = {}
        #: Called first by ``collect``: the observer folds its tallies (``fold``).
        self.before_collect: list[Callable[[], None]] = []

    def observe(self, record: AccessRecord) -> None:
        # Once per request on the event loop: the histograms' updates are inlined (a method
        # call each cost as much as the update).
        route = self._routes.get(record.route)
        if route is None:
            route = self._new_route(record.route)
        requests = route.requests
        key = (record.api_version, record.status)
        count = requests.get(key)
        if count is None and key[0] is not None and key[0] not in self._known:
            # The client chose this string: bound it here, or every distinct one would be
            # kept for the life of the process (the scrape bounds only the label).
            key = (OTHER, record.status)
            count = requests.get(key)
        requests[key] = (count or 0) + 1
        if record.watch:
            route.watches += 1
        else:
            seconds = record.seconds
            histogram = route.duration
            histogram.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # le: <= bound
            histogram.sum += seconds
        size = record.bytes
        histogram = route.size
        histogram.buckets[bisect_left(SIZE_BUCKETS, size)] += 1
        histogram.sum += size
        if record.refused is not None:
            reason = record.refused if record.refused in REFUSAL_REASONS else "other"
            self._refused[reason] = self._refused.get(reason, 0) + 1

    def slot(self, route: str, api_version: str | None, status: int, watch: bool) -> Slot:
        """The pre-bound slot of an answer that was not refused (a refusal is counted by
        ``observe``, by reason)."""
        found = self._routes.get(route)
        if found is None:
            found = self._new_route(route)
        key = (api_version, status)
        if api_version is not None and api_version not in self._known:
            key = (OTHER, status)  # bounded as ``observe`` does
        found.requests.setdefault(key, 0)
        return Slot(found, key, watch)

    def count(self, slot: Slot, seconds: float, size: int) -> None:
        """One answered request of ``slot``'s kind: what ``observe`` counts, less the
        lookups (inlined for the same reason)."""
        requests = slot.requests
        key = slot.key
        requests[key] += 1
        route = slot.route
        if slot.watch:
            route.watches += 1
        else:
            histogram = route.duration
            histogram.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            histogram.sum += seconds
        histogram = route.size
        histogram.buckets[bisect_left(SIZE_BUCKETS, size)] += 1
        histogram.sum += size

    def fold(self, tally: Tally) -> None:
        """Add what ``tally`` counted since its last fold to its slot."""
        n = tally.n
        if not n:
            return
        tally.n = 0
        slot = tally.slot
        slot.requests[slot.key] += n
        route = slot.route
        if slot.watch:
            route.watches += n
        size = route.size
        size.buckets[bisect_left(SIZE_BUCKETS, tally.size)] += n
        size.sum += tally.size * n

    def _new_route(self, name: str) -> _Route:
        if name not in self._routes and len(self._routes) >= MAX_ROUTES:
            name = "other"
        return self._routes.setdefault(name, _Route(name))

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        for fold in self.before_collect:
            fold()
        requests = CounterMetricFamily(
            "imds_http_requests", "Answered metadata requests by route, api-version and code.",
            labels=["route", "api_version", "code"])
        merged: dict[tuple[str, str, str], int] = {}
        for route in self._routes.values():
            for (version, status), count in route.requests.items():
                label = (route.name, bound_api_version(version, self._known), str(status))
                merged[label] = merged.get(label, 0) + count
        for labels, count in sorted(merged.items()):
            requests.add_metric(list(labels), count)
        yield requests
        duration = HistogramMetricFamily(
            "imds_http_request_duration_seconds",
            "Time from request received to response written (wait_for_change excluded).",
            labels=["route"])
        size = HistogramMetricFamily("imds_http_response_size_bytes", "Response body sizes.",
                                     labels=["route"])
        watches = CounterMetricFamily("imds_http_watch_requests",
                                      "Answered wait_for_change (long-poll) requests.",
                                      labels=["route"])
        for name in sorted(self._routes):
            counts = self._routes[name]
            duration.add_metric([name], counts.duration.cumulative(), counts.duration.sum)
            size.add_metric([name], counts.size.cumulative(), counts.size.sum)
            watches.add_metric([name], counts.watches)
        yield from (duration, size, watches)
        refused = CounterMetricFamily("imds_http_requests_refused",
                                      "Requests refused, by reason (rate-limited included).",
                                      labels=["reason"])
        for reason, count in sorted(self._refused.items()):
            refused.add_metric([reason], count)
        yield refused
