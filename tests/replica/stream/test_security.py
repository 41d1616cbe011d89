"""deploy/nats/imds-west.conf: host-1 reads its own and _all subjects, never host-2's."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from imds_replica import Event, MemoryLog, open_replica
from imds_replica._stream._bridge import Connection
from imds_replica._stream._publisher import Publisher
from imds_replica._stream._source import StreamSource
from imds_replica._stream._transport import ConnectOptions, TransportError
from imds_replica._stream._wire import stream_name, stream_subjects, subject
from tests._nats import NatsServer

pytestmark = pytest.mark.integration
CONF = Path(__file__).parents[3] / "deploy" / "nats" / "imds-west.conf"
KEY = ("vms", "vm-1", "compute", "name")


def _as(server: NatsServer, user: str) -> ConnectOptions:
    return ConnectOptions(servers=(server.url,), user=user, password=f"{user}-change-me",
                          inbox_prefix=f"_INBOX_{user}" if user != "publisher" else None)


@pytest.fixture
def secured(tmp_path: Path) -> object:
    server = NatsServer(tmp_path, config=CONF.read_text()).start()
    try:
        yield server
    finally:
        server.kill()


async def test_host_reads_only_its_own_and_all(secured: NatsServer) -> None:
    server = secured
    assert isinstance(server, NatsServer)
    admin = await Connection.open(_as(server, "publisher"))
    try:
        await admin.add_stream(name=stream_name("west"), subjects=stream_subjects("west"),
                               max_consumers=10, replicas=1)
        publisher = Publisher(admin, cluster="west")
        await publisher.publish([Event("fleet", KEY, 1, "for host-2")], host="host-2")
        await publisher.publish([Event("fleet", ("vms", "vm-9", "compute", "name"), 1,
                                       "everyone")], host=None)
        await publisher.publish([Event("fleet", ("vms", "vm-3", "compute", "name"), 1,
                                       "for host-1")], host="host-1")

        # host-1's own source works under these permissions: its own and _all, not host-2's.
        source = StreamSource("fleet", cluster="west", host="host-1",
                              options=_as(server, "host-1"), fetch_timeout=1.0,
                              heartbeat=0.25)
        async with open_replica(MemoryLog(), sources=[source]) as replica:
            with trio.fail_after(15):
                while source.statistics().cursor_seq != 3:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            assert replica.view.get(KEY) is None
            vm9 = replica.view.get(("vms", "vm-9", "compute", "name"))
            vm3 = replica.view.get(("vms", "vm-3", "compute", "name"))
            assert vm9 is not None
            assert vm9.value == "everyone"
            assert vm3 is not None
            assert vm3.value == "for host-1"

        host1 = await Connection.open(_as(server, "host-1"))
        try:
            stream = stream_name("west")
            # Not through host-2's consumer...
            with pytest.raises(TransportError):
                await host1.recreate_consumer(
                    stream=stream, name="imds-host-2-fleet",
                    filter="imds.west.host-2.fleet.*", start_seq=1,
                    inactive_threshold=60, max_buffered=10)
            # ...nor by reading the message from the stream directly.
            with pytest.raises(TransportError):
                await host1.last_messages(stream, [subject("west", "host-2", "fleet", KEY)])
        finally:
            await host1.aclose()
    finally:
        await admin.aclose()


async def test_host_cannot_subscribe_to_another_hosts_subjects(secured: NatsServer) -> None:
    import nats  # the core-NATS read a host could try besides JetStream

    server = secured
    assert isinstance(server, NatsServer)
    errors: list[Exception] = []

    async def go() -> None:
        async def on_error(exc: Exception) -> None:
            errors.append(exc)

        nc = await nats.connect(server.url, user="host-1", password="host-1-change-me",
                                error_cb=on_error, allow_reconnect=False,
                                inbox_prefix="_INBOX_host-1")
        try:
            await nc.subscribe("imds.west.host-2.>")
            await nc.flush()
            import asyncio

            await asyncio.sleep(0.3)
        finally:
            await nc.close()

    import asyncio

    await trio.to_thread.run_sync(asyncio.run, go())
    assert any("permissions violation" in str(e).lower() for e in errors), errors


SECRET = b"host-2's secret"


async def _attack(url: str) -> list[str]:
    """host-1 tries every way it has to point a consumer it may create at host-2's
    subjects and pull from it; returns what it managed to read of host-2's data."""
    import asyncio
    import json

    import nats

    stream = stream_name("west")
    own = "imds.west.host-1.fleet.*"
    other = "imds.west.host-2.fleet.*"
    base = f"$JS.API.CONSUMER.CREATE.{stream}"
    attempts = []
    for name in ("imds-host-1-fleet", "imds-host-1-fleet-all"):
        for filters in ({"filter_subject": other}, {"filter_subjects": [own, other]},
                        {"filter_subjects": [other]},
                        {"filter_subject": own, "filter_subjects": [other]}):
            for create in (f"{base}.{name}", f"{base}.{name}.{own}",
                           f"{base}.{name}.imds.west._all.fleet.*", f"{base}.{name}.{other}"):
                attempts.append((name, create, filters))
    stolen: list[str] = []

    async def go() -> None:
        async def on_error(exc: Exception) -> None:
            pass

        nc = await nats.connect(url, user="host-1", password="host-1-change-me",
                                error_cb=on_error, allow_reconnect=False,
                                inbox_prefix="_INBOX_host-1")
        try:
            for name, create, filters in attempts:
                config = {"name": name, "deliver_policy": "all", "ack_policy": "none",
                          "mem_storage": True, "num_replicas": 1, **filters}
                body = json.dumps({"stream_name": stream, "config": config}).encode()
                try:
                    answer = await nc.request(create, body, timeout=0.3)
                except Exception:  # refused by permissions: no answer comes
                    continue
                if b'"error"' in answer.data:
                    continue
                inbox = nc.new_inbox()
                sub = await nc.subscribe(inbox)
                await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
                                 json.dumps({"batch": 10, "expires": 500_000_000}).encode(),
                                 reply=inbox)
                try:
                    while True:
                        msg = await sub.next_msg(timeout=1)
                        if msg.data == SECRET:
                            stolen.append(f"{create} {filters}")
                except Exception:
                    pass
                await sub.unsubscribe()
                await asyncio.sleep(0)
        finally:
            await nc.close()

    await trio.to_thread.run_sync(asyncio.run, go())
    return stolen


async def test_host_cannot_point_its_own_consumer_at_another_hosts_subjects(
        secured: NatsServer) -> None:
    """The two-filter consumer's create subject does not carry its filters, so NATS
    permissions could not stop this; single-filter consumers created on the filtered
    create subject (which names the filter) can be restricted."""
    server = secured
    assert isinstance(server, NatsServer)
    admin = await Connection.open(_as(server, "publisher"))
    try:
        await admin.add_stream(name=stream_name("west"), subjects=stream_subjects("west"),
                               max_consumers=50, replicas=1)
        await admin.publish(subject("west", "host-2", "fleet", KEY), SECRET)
        assert await _attack(server.url) == []
    finally:
        await admin.aclose()
