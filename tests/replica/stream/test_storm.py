"""A reconnect storm: many hosts lose NATS at once — every connection cut by a proxy, then
nats-server killed with SIGKILL and restarted — again and again while the publisher goes
on, and all reconnect together. Every host ends with its view equal to the reference built
from its own and the cluster's events, and the stream's consumer count stays bounded (the
consumers are deterministic per host: recreated ones replace, never add)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import pytest
import trio

from imds_replica import Event, MemoryLog, Replica, View, open_replica
from imds_replica._stream._bridge import Connection
from imds_replica._stream._publisher import Publisher
from imds_replica._stream._source import StreamSource
from imds_replica._stream._transport import ConnectOptions
from imds_replica._stream._wire import stream_name
from tests._nats import NatsServer

from .conftest import create_stream
from .test_faults import CuttableProxy

pytestmark = pytest.mark.integration
CLUSTER = "storm"
HOSTS = [f"host-{i}" for i in range(12)]
KEYS = 8


def _round(versions: Iterable[int], tag: str) -> tuple[dict[str, list[Event]], list[Event]]:
    """One update of every host's registers and of the cluster's."""
    it = iter(versions)
    own = {h: [Event("fleet", ("vms", f"{h}-vm-{i}", "compute", "name"), next(it),
                     f"{tag}{i}") for i in range(KEYS)] for h in HOSTS}
    shared = [Event("fleet", ("vms", f"shared-{i}", "compute", "name"), next(it), f"{tag}{i}")
              for i in range(KEYS)]
    return own, shared


async def _consumers(url: str) -> int:
    conn = await Connection.open(ConnectOptions(servers=(url,)))
    try:
        info = await conn.stream_info(stream_name(CLUSTER))
        return int(info["state"]["consumer_count"])
    finally:
        await conn.aclose()


# nats-py 2.16 drops the sockets of failed reconnect attempts without closing them (they
# warn when collected); the test is about our behaviour, not that leak.
@pytest.mark.filterwarnings("ignore::ResourceWarning",
                            "ignore::pytest.PytestUnraisableExceptionWarning")
async def test_reconnect_storm_converges_every_host(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    try:
        await create_stream(server.url, CLUSTER, max_consumers=2 * len(HOSTS))
        versions = itertools.count(1)
        published: dict[str, list[Event]] = {h: [] for h in HOSTS}
        shared_published: list[Event] = []

        async def publish_round(tag: str) -> None:
            own, shared = _round(versions, tag)
            async with Publisher.connect(ConnectOptions(servers=(server.url,)),
                                         cluster=CLUSTER) as publisher:
                for host, events in own.items():
                    report = await publisher.publish(events, host=host)
                    assert report.published == len(events), report
                    published[host] += events
                report = await publisher.publish(shared, host=None)
                assert report.published == len(shared), report
            shared_published.extend(shared)

        def references() -> dict[str, bytes]:
            out = {}
            for host in HOSTS:
                view = View()
                view.load([*published[host], *shared_published])
                out[host] = view.digest()
            return out

        async with trio.open_nursery() as nursery:
            proxy = CuttableProxy(server.port)
            await nursery.start(proxy.run)
            sources = {
                h: StreamSource("fleet", cluster=CLUSTER, host=h, options=ConnectOptions(
                    servers=(f"nats://127.0.0.1:{proxy.port}",), connect_timeout=1.0,
                    ping_interval=1.0, reconnect_wait=0.2, inbox_prefix=f"_INBOX_{h}"),
                    fetch_timeout=1.0, heartbeat=0.25, backoff_max=1.0, call_timeout=3.0)
                for h in HOSTS}
            replicas: dict[str, Replica] = {}

            async def run_host(host: str, *, task_status: trio.TaskStatus[None]) -> None:
                async with open_replica(MemoryLog(), sources=[sources[host]]) as replica:
                    replicas[host] = replica
                    task_status.started()
                    await trio.sleep_forever()

            await publish_round("a")
            for host in HOSTS:
                await nursery.start(run_host, host)

            async def converged(limit: float) -> None:
                expected = references()
                with trio.fail_after(limit):
                    while any(replicas[h].view.digest() != expected[h]  # noqa: ASYNC110
                              for h in HOSTS):
                        await trio.sleep(0.1)

            await converged(30)
            # Every connection cut at once, the publisher goes on, all reconnect together.
            for tag in ("b", "c", "d"):
                proxy.cut()
                await publish_round(tag)
                await trio.sleep(1.5)  # long enough for every host to notice (pings: 1 s)
                proxy.restore()
                await publish_round(tag + "'")
            await converged(60)
            # nats-server killed with SIGKILL (its memory consumers are gone), restarted on
            # the same port and store while every host retries, then written to at once.
            for tag in ("e", "f"):
                server.kill()
                await trio.sleep(1.0)
                server.start()
                await publish_round(tag)
            await converged(60)
            assert await _consumers(server.url) <= 2 * len(HOSTS)
            for host, source in sources.items():
                stats = source.statistics()
                assert stats.connected, host
                # The restart took every (memory) consumer: each host made new ones.
                assert stats.recreations >= 1, (host, stats)
                assert stats.phase == "following", (host, stats)
            nursery.cancel_scope.cancel()
    finally:
        server.kill()
