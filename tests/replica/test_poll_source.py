"""``PollSource``: the contract and the HTTP protocol against a real server on 127.0.0.1,
and the backoff schedule on trio's MockClock (through an in-memory transport, no sockets)."""

from __future__ import annotations

import http.server
import itertools
import json
import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tenacity
import trio
import trio.testing

from imds_replica._errors import ConfigError
from imds_replica._event import Event
from imds_replica._liveliness import SourceState
from imds_replica._logport import MemoryLog
from imds_replica._poll_source import PollSource, retry_after_seconds
from imds_replica._replica import open_replica
from imds_replica._source import Source
from imds_replica.testing._source_contract import DELETED, SourceContract, Spec

SRC = "tags"


class Upstream:
    """A regional endpoint: serves its events as ``{"events": [...]}`` with an ETag.

    ``mode`` switches it to misbehave: ``"500"``, ``"slow"`` (answers only when the test
    ends), ``"trickle"`` (sends its body a byte at a time), ``"raw"`` (serves ``raw`` as
    the body, with a fresh ETag), ``"no-etag"``.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: dict[tuple[str, ...], dict[str, Any]] = {}
        self.generation = 0
        self.mode = "ok"
        self.raw = b""
        self.requests: list[str | None] = []  # the If-None-Match of each request
        self.released = threading.Event()
        self.url = ""

    def put(self, *events: dict[str, Any]) -> None:
        with self.lock:
            for event in events:
                self.events[tuple(event["key"])] = event
            self.generation += 1

    @property
    def etag(self) -> str:
        return f'"gen-{self.generation}"'

    def respond(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        if_none_match = handler.headers.get("If-None-Match")
        with self.lock:
            self.requests.append(if_none_match)
            mode, etag = self.mode, self.etag
            body = (self.raw if mode == "raw" else
                    json.dumps({"events": list(self.events.values())}).encode())
        if mode == "slow":
            self.released.wait(10)
            return
        if mode == "trickle":  # a byte at a time: every read is quick, the whole is not
            handler.send_response(200)
            handler.send_header("Content-Length", "1000")
            handler.end_headers()
            for _ in range(1000):
                if self.released.wait(0.02):
                    return
                handler.wfile.write(b" ")
                handler.wfile.flush()
            return
        if mode == "500":
            handler.send_response(500)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if mode == "raw":
            etag = f'"raw-{len(self.requests)}"'
        if mode != "no-etag" and if_none_match == etag:
            handler.send_response(304)
            handler.send_header("ETag", etag)
            handler.end_headers()
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        if mode != "no-etag":
            handler.send_header("ETag", etag)
        handler.end_headers()
        handler.wfile.write(body)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    state = Upstream()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            try:
                state.respond(self)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/events"
    try:
        yield state
    finally:
        state.released.set()
        server.shutdown()
        server.server_close()
        thread.join()


def wire(key: tuple[str, ...], version: int, value: Any = None, *, deleted: bool = False,
         source: str = SRC) -> dict[str, Any]:
    event = Event(source, key, version, value, deleted=deleted)
    return event.to_dict()


KEY = ("vms", "vm1", "compute", "tagsList")


# -- the contract, against the real server -------------------------------------------------

@pytest.mark.integration
class TestPollSource(SourceContract):
    @pytest.fixture(autouse=True)
    def _upstream(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.version = 0

    def make_source(self, tmp_path: Path) -> Source:
        return PollSource(self.SOURCE, self.upstream.url, interval=0.05, timeout=5)

    def stage(self, spec: Spec) -> None:
        events = []
        for key, value in spec.items():
            self.version += 1
            events.append(wire(key, self.version, None, deleted=True, source=self.SOURCE)
                          if value is DELETED else wire(key, self.version, value,
                                                        source=self.SOURCE))
        self.upstream.put(*events)

    async def settle(self, source: Source) -> None:
        assert isinstance(source, PollSource)
        result = await source.poll_now()
        assert result.ok, result.error


# -- the protocol, against the real server -------------------------------------------------

def status_of(replica: Any) -> Any:
    return replica.liveliness.status(SRC, replica.now())


#: Seconds allowed (real time) for what the running loop does by itself: generous, as a
#: loaded machine may be slow to run the server thread; waits end as soon as it is done.
LOOP_BOUND = 60


async def first_attempt(source: PollSource) -> None:
    """Wait for the attempt the loop makes as soon as it starts."""
    with trio.fail_after(LOOP_BOUND):
        while True:
            stats = source.statistics()
            if stats.bodies + stats.not_modified + stats.failures:
                return
            await trio.sleep(0.005)


@pytest.mark.integration
async def test_etag_is_sent_and_304_is_contact_only(upstream: Upstream) -> None:
    upstream.put(wire(KEY, 1, ["a"]))
    records: list[Any] = []
    source = PollSource(SRC, upstream.url, interval=3600)
    ticks = itertools.count()  # a replica clock that moves on every reading
    async with open_replica(MemoryLog(records), sources=[source],
                            clock=lambda: float(next(ticks))) as replica:
        await first_attempt(source)
        assert source.statistics().bodies == 1
        assert source.statistics().events == 1
        assert replica.view.get(KEY).value == ["a"]  # type: ignore[union-attr]
        assert replica.cursor(SRC) == upstream.etag == source.cursor
        logged = len(records)
        contact = status_of(replica).last_contact
        second = await source.poll_now()
        assert (second.ok, second.status) == (True, 304)
        assert len(records) == logged, "a 304 must not write to the log"
        assert status_of(replica).last_contact > contact
        assert upstream.requests == [None, upstream.etag]
        upstream.put(wire(KEY, 2, ["b"]))
        third = await source.poll_now()
        assert third.status == 200
        assert replica.view.get(KEY).value == ["b"]  # type: ignore[union-attr]
        stats = source.statistics()
        assert (stats.attempts, stats.bodies, stats.not_modified) == (3, 2, 1)


@pytest.mark.integration
async def test_restart_resumes_with_the_persisted_etag(upstream: Upstream) -> None:
    upstream.put(wire(KEY, 1, ["a"]))
    records: list[Any] = []
    source = PollSource(SRC, upstream.url, interval=3600)
    async with open_replica(MemoryLog(records), sources=[source]):
        await first_attempt(source)
    upstream.requests.clear()
    again = PollSource(SRC, upstream.url, interval=3600)
    async with open_replica(MemoryLog(records), sources=[again]):
        await first_attempt(again)
        assert again.statistics().not_modified == 1
    assert upstream.requests == [upstream.etag]


@pytest.mark.integration
async def test_server_error_is_a_failure_and_keeps_everything(upstream: Upstream) -> None:
    upstream.put(wire(KEY, 1, ["a"]))
    source = PollSource(SRC, upstream.url, interval=3600)
    async with open_replica(sources=[source]) as replica:
        await first_attempt(source)
        etag, digest = source.cursor, replica.view.digest()
        upstream.mode = "500"
        result = await source.poll_now()
        assert (result.ok, result.status) == (False, 500)
        assert result.error is not None
        assert "HTTP 500" in result.error
        assert status_of(replica).last_error == result.error
        assert status_of(replica).consecutive_failures >= 1
        assert (source.cursor, replica.view.digest()) == (etag, digest)
        upstream.mode = "ok"
        assert (await source.poll_now()).ok
        assert status_of(replica).last_error is None
        assert source.statistics().consecutive_failures == 0


@pytest.mark.integration
@pytest.mark.parametrize(("body", "reason"), [
    (b'{"events": [', "bad JSON"),
    (b'{"events": {"not": "a list"}}', '"events" must be a list'),
    (b"[]", 'must be an object {"events"'),
    (json.dumps({"events": [wire(KEY, 5, ["new"]), {"source": SRC, "key": [],
                                                    "version": 1, "value": 1}]}).encode(),
     "event 1: key"),
    (json.dumps({"events": [wire(KEY, 5, ["new"]), wire(KEY, 6, 1, source="other")]}).encode(),
     "event 1: source: 'other' submitted through source 'tags'"),
    (b'{"events": [], "x": NaN}', "NaN is not valid JSON"),
])
async def test_malformed_body_is_refused_whole(upstream: Upstream, body: bytes,
                                               reason: str) -> None:
    upstream.put(wire(KEY, 1, ["a"]))
    records: list[Any] = []
    source = PollSource(SRC, upstream.url, interval=3600)
    async with open_replica(MemoryLog(records), sources=[source]) as replica:
        await first_attempt(source)
        assert source.statistics().bodies == 1
        etag, digest, logged = source.cursor, replica.view.digest(), len(records)
        upstream.mode, upstream.raw = "raw", body
        result = await source.poll_now()
        assert not result.ok
        assert result.error is not None
        assert result.error.startswith("body refused: ")
        assert reason in result.error
        assert (source.cursor, replica.view.digest(), len(records)) == (etag, digest, logged)
        assert replica.cursor(SRC) == etag
        assert status_of(replica).last_error == result.error


@pytest.mark.integration
async def test_connection_refused_is_a_failure() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens there any more.
    source = PollSource(SRC, f"http://127.0.0.1:{port}/events", interval=3600, timeout=5)
    async with open_replica(sources=[source]) as replica:
        await first_attempt(source)
        result = await source.poll_now()
        assert not result.ok
        assert result.status is None
        assert result.error is not None
        assert result.error.startswith("ConnectError")
        status = status_of(replica)
        assert status.last_attempt is not None
        assert status.last_contact is None
        assert status.state is SourceState.UNKNOWN


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["slow", "trickle"])
async def test_timeout_bounds_the_whole_attempt(upstream: Upstream, mode: str) -> None:
    upstream.mode = mode
    source = PollSource(SRC, upstream.url, interval=3600, timeout=0.3)
    async with open_replica(sources=[source]) as replica:
        await first_attempt(source)
        started = trio.current_time()
        result = await source.poll_now()
        # Far below what the server takes (10 s "slow", 20 s "trickle"): the deadline cut
        # the whole attempt short, not a per-read timeout (which "trickle" never trips).
        assert trio.current_time() - started < 5
        assert not result.ok
        assert result.error is not None
        assert "timed out after 0.3s" in result.error
        assert len(replica.view) == 0


@pytest.mark.integration
async def test_no_etag_means_no_cursor_and_unconditional_requests(upstream: Upstream) -> None:
    upstream.put(wire(KEY, 1, ["a"]))
    upstream.mode = "no-etag"
    records: list[Any] = []
    source = PollSource(SRC, upstream.url, interval=3600)
    async with open_replica(MemoryLog(records), sources=[source]) as replica:
        await first_attempt(source)
        logged = len(records)
        second = await source.poll_now()
        assert second.status == 200
        assert (second.events, second.changed) == (1, 0)
        assert len(records) == logged, "the same body again must not grow the log"
        assert replica.cursor(SRC) is None
        upstream.put(wire(("vms", "vm2", "compute", "name"), 1, "b"))
        third = await source.poll_now()
        assert (third.events, third.changed) == (2, 1)
        assert [len(batch) for batch, _ in records[logged:]] == [1]
    assert set(upstream.requests) == {None}


@pytest.mark.integration
async def test_transform_and_its_failures(upstream: Upstream) -> None:
    def transform(body: Any) -> list[Event]:
        return [Event(SRC, ("vms", vm, "compute", "tagsList"), body["version"], tags)
                for vm, tags in body["tags"].items()]

    upstream.mode = "raw"
    upstream.raw = json.dumps({"version": 3, "tags": {"vm1": ["x"], "vm2": []}}).encode()
    source = PollSource(SRC, upstream.url, interval=3600, transform=transform)
    async with open_replica(sources=[source]) as replica:
        await first_attempt(source)
        assert source.statistics().events == 2
        assert replica.view.document(("vms", "vm1")) == {"compute": {"tagsList": ["x"]}}
        upstream.raw = b'{"version": 4}'
        result = await source.poll_now()
        assert result.error == "body refused: transform failed: KeyError: 'tags'"


@pytest.mark.integration
async def test_oversized_body_is_refused(upstream: Upstream) -> None:
    upstream.put(*[wire(("vms", f"vm{i}", "compute", "name"), 1, "x" * 100) for i in range(50)])
    source = PollSource(SRC, upstream.url, interval=3600, max_body_bytes=1000)
    async with open_replica(sources=[source]) as replica:
        await first_attempt(source)
        result = await source.poll_now()
        assert result.error == "body larger than 1000 bytes"
        assert len(replica.view) == 0


@pytest.mark.integration
async def test_the_loop_polls_by_itself(upstream: Upstream) -> None:
    upstream.put(wire(KEY, 1, ["a"]))
    source = PollSource(SRC, upstream.url, interval=0.05)
    async with open_replica(sources=[source]) as replica:
        with trio.fail_after(LOOP_BOUND):
            while replica.view.get(KEY) is None:
                await replica.wait_any_change()
            upstream.put(wire(KEY, 2, ["b"]))
            while replica.view.get(KEY).value != ["b"]:  # type: ignore[union-attr]
                await replica.wait_any_change()
        assert status_of(replica).state is SourceState.LIVE


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigError, match="url"):
        PollSource(SRC, "ftp://example.invalid/x")
    with pytest.raises(ConfigError, match="url"):
        PollSource(SRC, "not a url")
    with pytest.raises(ConfigError, match="name"):
        PollSource("Tags!", "http://127.0.0.1/x")
    with pytest.raises(ConfigError, match="timeout"):
        PollSource(SRC, "http://127.0.0.1/x", timeout=0)


async def test_poll_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="before run"):
        await PollSource(SRC, "http://127.0.0.1/x").poll_now()


# -- the schedule, on the MockClock (in-memory transport: no sockets) -----------------------

class Script:
    """Answers by a script of statuses, recording when (virtual time) each attempt came."""

    def __init__(self, statuses: list[Any], attempts: int) -> None:
        self.statuses = statuses
        self.times: list[float] = []
        self.attempts = attempts
        self.done = trio.Event()  # set at the ``attempts``-th attempt

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.times.append(trio.current_time())
        if len(self.times) >= self.attempts:
            self.done.set()
        status = self.statuses.pop(0) if self.statuses else 200
        headers: dict[str, str] = {}
        if isinstance(status, tuple):  # (status, response headers)
            status, headers = status
        if status == 0:
            raise httpx.ConnectError("refused", request=request)
        if status == 200:
            return httpx.Response(200, json={"events": []}, headers={"ETag": '"e"'})
        return httpx.Response(status, headers=headers)

    def gaps(self) -> list[float]:
        return [round(b - a, 6) for a, b in zip(self.times, self.times[1:], strict=False)]


async def run_script(script: Script, **options: Any) -> Any:
    async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as client:
        source = PollSource(SRC, "http://region.invalid/events", client=client, **options)
        async with open_replica(sources=[source], clock=trio.current_time) as replica:
            await script.done.wait()
            # Let that last attempt finish (on the MockClock this sleep ends only once every
            # task is blocked, long before the source's next attempt is due).
            await trio.sleep(0.001)
            return status_of(replica), source.statistics()


async def test_backoff_grows_to_its_cap_then_interval_resumes(
        autojump_clock: trio.testing.MockClock) -> None:
    script = Script([500, 0, 503, 500, 0, 500, 200, 200, 500, 200], attempts=11)
    status, stats = await run_script(
        script, interval=60, backoff=tenacity.wait_exponential(multiplier=1, max=8),
        jitter=0)
    assert script.gaps() == [1, 2, 4, 8, 8, 8, 60, 60, 1, 60]
    assert stats.failures == 7
    assert stats.consecutive_failures == 0
    # Every attempt updated liveliness: the last one was a contact.
    assert status.last_attempt == status.last_contact == script.times[-1]


async def test_default_backoff_is_jittered_exponential_and_capped(
        autojump_clock: trio.testing.MockClock) -> None:
    script = Script([500] * 14, attempts=16)
    status, stats = await run_script(script, interval=2, backoff_max=5, jitter=0)
    gaps = script.gaps()
    bounds = [min(2 ** i, 5) for i in range(14)]
    assert all(0 <= g <= b for g, b in zip(gaps, bounds, strict=False)), gaps
    assert len(set(gaps[:14])) > 3, "jitter: the waits should differ"
    assert gaps[14] == 2, "after a success the cadence is the interval again"
    assert status.consecutive_failures == 0
    assert status.last_contact == script.times[-1]
    assert stats.failures == 14
    assert stats.bodies == 2


async def test_liveliness_on_every_attempt(autojump_clock: trio.testing.MockClock) -> None:
    script = Script([500, 500], attempts=3)
    async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as client:
        source = PollSource(SRC, "http://region.invalid/events", client=client, interval=60,
                            backoff=tenacity.wait_fixed(10), jitter=0)
        async with open_replica(sources=[source], clock=trio.current_time) as replica:
            seen = []
            await trio.sleep(5)  # half-way between attempts (at 0, 10, 20)
            for _ in range(3):
                status = status_of(replica)
                seen.append((status.last_attempt, status.consecutive_failures,
                             status.last_contact))
                await trio.sleep(10)
    t = script.times
    assert seen == [(t[0], 1, None), (t[1], 2, None), (t[2], 0, t[2])]


# -- 11.12: Retry-After and a jittered interval ------------------------------------------------

@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured(status: int,
                                       autojump_clock: trio.testing.MockClock) -> None:
    script = Script([(status, {"Retry-After": "120"}), 500, 200], attempts=4)
    _, stats = await run_script(script, interval=60, backoff=tenacity.wait_fixed(1),
                                jitter=0)
    # Waited as told (not the 1 s backoff), then the backoff, then the interval.
    assert script.gaps() == [120, 1, 60]
    assert stats.failures == 2


async def test_retry_after_is_capped(autojump_clock: trio.testing.MockClock) -> None:
    script = Script([(503, {"Retry-After": str(10**9)}), 200], attempts=3)
    await run_script(script, interval=60, backoff=tenacity.wait_fixed(1), jitter=0,
                     max_retry_after=600)
    assert script.gaps() == [600, 60]


@pytest.mark.parametrize(("value", "expected"), [
    ("120", 120.0), (" 7 ", 7.0), ("0", 0.0), ("-5", None), ("soon", None), ("1.5", None),
    ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0), ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
])
def test_retry_after_values(value: str, expected: float | None) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert retry_after_seconds(value, now) == expected


async def test_the_interval_is_jittered_deterministically_with_a_given_rng(
        autojump_clock: trio.testing.MockClock) -> None:
    runs = []
    for _ in range(2):
        script = Script([], attempts=8)
        await run_script(script, interval=60, jitter=0.1, rng=random.Random(7))
        runs.append(script.gaps())
    assert runs[0] == runs[1]
    assert all(54 <= g <= 66 for g in runs[0]), runs[0]
    assert len(set(runs[0])) > 3, "the polls of a fleet must not march in step"


def test_jitter_is_validated() -> None:
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="jitter"):
            PollSource(SRC, "http://region.invalid/", jitter=bad)
