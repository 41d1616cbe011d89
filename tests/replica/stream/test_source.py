"""``StreamSource`` against a real nats-server: the source contract, refusals, recovery."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import pytest
import trio

from imds_replica import Event, MemoryLog, open_replica
from imds_replica._stream._source import StreamSource
from imds_replica._stream._transport import ConnectOptions
from imds_replica.testing import SourceContract
from imds_replica.testing._source_contract import DELETED, Spec
from tests._nats import NatsServer

from .conftest import create_stream, fresh_cluster, in_thread, last_seq, publish

pytestmark = pytest.mark.integration
HOST = "host-1"


class TestStreamSourceContract(SourceContract):
    @pytest.fixture(autouse=True)
    def _stream(self, nats_server: NatsServer) -> None:
        self.url = nats_server.url
        self.cluster = fresh_cluster()
        self.versions = itertools.count(1)
        self.published = 0
        in_thread(create_stream, self.url, self.cluster)

    def make_source(self, tmp_path: Path) -> StreamSource:
        return StreamSource(self.SOURCE, cluster=self.cluster, host=HOST, servers=[self.url],
                            fetch_timeout=1.0, heartbeat=0.25)

    def stage(self, spec: Spec) -> None:
        events = [Event(self.SOURCE, key, next(self.versions), deleted=True)
                  if value is DELETED else Event(self.SOURCE, key, next(self.versions), value)
                  for key, value in spec.items()]
        report = in_thread(publish, self.url, self.cluster, events, HOST)
        assert report.published == len(events), report
        self.published = in_thread(last_seq, self.url, self.cluster)

    async def settle(self, source: object) -> None:
        assert isinstance(source, StreamSource)
        await source.wait_applied(self.published)


async def _wait(predicate: object, limit: float = 15.0) -> None:
    with trio.fail_after(limit):
        while not predicate():  # type: ignore[operator]  # noqa: ASYNC110 - polls stats
            await trio.sleep(0.02)


KEY = ("vms", "vm-1", "compute", "name")


async def test_garbage_is_refused_counted_and_does_not_stop_the_stream(
        nats_server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    from imds_replica._stream._bridge import Connection
    from imds_replica._stream._transport import ConnectOptions
    from imds_replica._stream._wire import stream_name

    cluster = fresh_cluster()
    await create_stream(nats_server.url, cluster)
    conn = await Connection.open(ConnectOptions(servers=(nats_server.url,)))
    try:
        garbage = await conn.publish(f"imds.{cluster}.{HOST}.fleet.{'0' * 32}", b"\xc1junk")
        wrong = Event("fleet", KEY, 1, "x")
        from imds_replica._stream._wire import encode_event, subject
        mismatch = await conn.publish(subject(cluster, HOST, "fleet", ("vms", "other")),
                                      encode_event(wrong))
        assert garbage.seq == 1
        assert mismatch.seq == 2
        await publish(nats_server.url, cluster, [Event("fleet", KEY, 2, "good")], HOST)
        source = StreamSource("fleet", cluster=cluster, host=HOST, servers=[nats_server.url],
                              fetch_timeout=1.0, heartbeat=0.25)
        with caplog.at_level(logging.WARNING):
            async with open_replica(MemoryLog(), sources=[source]) as replica:
                await _wait(lambda: source.statistics().cursor_seq == 3)
                register = replica.view.get(KEY)
                assert register is not None
                assert register.value == "good"
                stats = source.statistics()
                assert stats.refused == 2
                assert (await conn.stream_state(stream_name(cluster))).last_seq == 3
        assert "refused message 1" in caplog.text
        assert "refused message 2" in caplog.text
    finally:
        await conn.aclose()


async def test_consumer_deleted_is_recreated_and_nothing_is_lost(
        nats_server: NatsServer) -> None:
    from imds_replica._stream._bridge import Connection
    from imds_replica._stream._transport import ConnectOptions
    from imds_replica._stream._wire import consumer_name, stream_name

    cluster = fresh_cluster()
    await create_stream(nats_server.url, cluster)
    source = StreamSource("fleet", cluster=cluster, host=HOST, servers=[nats_server.url],
                          fetch_timeout=1.0, heartbeat=0.25)
    async with open_replica(MemoryLog(), sources=[source]) as replica:
        await publish(nats_server.url, cluster, [Event("fleet", KEY, 1, "one")], HOST)
        await _wait(lambda: source.statistics().cursor_seq == 1)
        conn = await Connection.open(ConnectOptions(servers=(nats_server.url,)))
        try:
            await conn.delete_consumer(stream_name(cluster), consumer_name(HOST, "fleet"))
        finally:
            await conn.aclose()
        # On the lane whose consumer is gone: only a recreated one delivers it.
        await publish(nats_server.url, cluster, [Event("fleet", KEY, 2, "two")], HOST)
        await _wait(lambda: source.statistics().host_seq == 2)
        register = replica.view.get(KEY)
        assert register is not None
        assert register.value == "two"
        assert source.statistics().recreations >= 1


async def test_unreachable_nats_does_not_hold_the_replica_and_reports_failure() -> None:
    options = ConnectOptions(servers=("nats://127.0.0.1:1",), connect_timeout=0.5)
    source = StreamSource("fleet", cluster="c", host=HOST, options=options,
                          fetch_timeout=1.0, heartbeat=0.25, backoff_max=0.2)
    with trio.fail_after(10):
        async with open_replica(MemoryLog(), sources=[source]) as replica:
            await _wait(lambda: source.statistics().failures >= 2)
            status = replica.liveliness.status("fleet", replica.now())
            assert status.last_error is not None
            assert status.last_contact is None


class _SlowLog(MemoryLog):
    """Each append takes ``hold`` seconds (an fsync on a slow disk) and is recorded."""

    def __init__(self, trace: list[str], hold: float) -> None:
        super().__init__()
        self.trace = trace
        self.hold = hold

    async def append(self, *args: Any, **kwargs: Any) -> Any:
        self.trace.append("append")
        await trio.sleep(self.hold)
        result = await super().append(*args, **kwargs)
        self.trace.append("durable")
        return result


@pytest.mark.parametrize("prefetch", [False, True])
async def test_prefetch_decides_whether_a_fetch_overlaps_the_fsync(
        nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch, prefetch: bool) -> None:
    """``prefetch = false`` is the strict backpressure of the wire contract: a lane's next
    fetch goes out only once its batch is durable. ``true`` lets one overlap the fsync."""
    from imds_replica._stream._bridge import Connection
    from imds_replica._stream._wire import consumer_name

    trace: list[str] = []
    started: list[int] = []  # per fetch that delivered: batches durable when it started
    fetch = Connection.fetch

    async def traced(self: Connection, name: str, *args: Any, **kwargs: Any) -> Any:
        durable = trace.count("durable")
        result = await fetch(self, name, *args, **kwargs)
        if name == consumer_name(HOST, "fleet") and result.deliveries:
            started.append(durable)
        return result

    monkeypatch.setattr(Connection, "fetch", traced)
    cluster = fresh_cluster()
    await create_stream(nats_server.url, cluster)
    await publish(nats_server.url, cluster,
                  [Event("fleet", ("vms", f"vm-{n}", "compute", "name"), 1, n)
                   for n in range(12)], HOST)
    source = StreamSource("fleet", cluster=cluster, host=HOST, servers=[nats_server.url],
                          fetch_timeout=1.0, heartbeat=0.25, batch=4, prefetch=prefetch)
    async with open_replica(_SlowLog(trace, 0.3), sources=[source]):
        await _wait(lambda: source.statistics().host_seq == 12)
    assert len(started) == 3  # 12 messages, 4 a fetch
    # Strict: the k-th fetch starts once the k batches before it are durable; with
    # prefetch, while the one before it is still being written.
    relative = [n - started[0] for n in started]
    assert relative == ([0, 0, 1] if prefetch else [0, 1, 2]), (started, trace)


async def test_a_tombstone_published_at_the_resync_tombstones_version_replaces_it(
        nats_server: NatsServer) -> None:
    """A resync tombstones what the recreated stream lacks at ``held + 1``; a tombstone
    published later at that version equals it but for its ``seq``, and the register must
    take the published one (the smaller seq, what a host that resynced after it holds):
    the shell's "already held exactly" filter must not drop it."""
    from imds_replica._stream._bridge import Connection
    from imds_replica._stream._cursor import RESYNC_SEQ
    from imds_replica._stream._wire import stream_name

    cluster = fresh_cluster()
    await create_stream(nats_server.url, cluster)
    source = StreamSource("fleet", cluster=cluster, host=HOST, servers=[nats_server.url],
                          fetch_timeout=1.0, heartbeat=0.25)
    async with open_replica(MemoryLog(), sources=[source]) as replica:
        await publish(nats_server.url, cluster, [Event("fleet", KEY, 5, "old")], HOST)
        await _wait(lambda: source.statistics().cursor_seq == 1)
        conn = await Connection.open(ConnectOptions(servers=(nats_server.url,)))
        try:
            await conn.delete_stream(stream_name(cluster))
        finally:
            await conn.aclose()
        await create_stream(nats_server.url, cluster)
        await _wait(lambda: source.statistics().tombstoned == 1)
        assert replica.view.get(KEY) == Event("fleet", KEY, 6, deleted=True)
        assert replica.view.get(KEY).seq == RESYNC_SEQ  # type: ignore[union-attr]
        await publish(nats_server.url, cluster, [Event("fleet", KEY, 6, deleted=True)],
                      HOST)
        await _wait(lambda: source.statistics().host_seq == 1)
        register = replica.view.get(KEY)
        assert register == Event("fleet", KEY, 6, deleted=True)
        assert register is not None
        assert register.seq == 1
