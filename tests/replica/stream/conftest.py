"""A real nats-server for the stream tests (one per module), and a way to publish into it
from synchronous test code."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from imds_replica import Event
from imds_replica._stream._bridge import Connection
from imds_replica._stream._publisher import Publisher, PublishReport
from imds_replica._stream._transport import ConnectOptions
from imds_replica._stream._wire import stream_name, stream_subjects
from tests._nats import NatsServer

_clusters = itertools.count()


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    try:
        yield server
    finally:
        server.kill()


def fresh_cluster() -> str:
    return f"t{next(_clusters)}"


def in_thread(fn: Any, *args: Any) -> Any:
    """Run the async ``fn(*args)`` to completion in its own trio run on another thread
    (for synchronous hooks called from inside a running trio test)."""
    out: list[Any] = []
    errors: list[BaseException] = []

    def main() -> None:
        try:
            out.append(trio.run(fn, *args))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=main)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return out[0]


async def create_stream(url: str, cluster: str, max_consumers: int = 100) -> None:
    conn = await Connection.open(ConnectOptions(servers=(url,)))
    try:
        await conn.add_stream(name=stream_name(cluster), subjects=stream_subjects(cluster),
                              max_consumers=max_consumers, replicas=1)
    finally:
        await conn.aclose()


async def publish(url: str, cluster: str, events: Iterable[Event],
                  host: str | None) -> PublishReport:
    async with Publisher.connect(ConnectOptions(servers=(url,)), cluster=cluster) as pub:
        return await pub.publish(list(events), host=host)


async def last_seq(url: str, cluster: str) -> int:
    conn = await Connection.open(ConnectOptions(servers=(url,)))
    try:
        return (await conn.stream_state(stream_name(cluster))).last_seq
    finally:
        await conn.aclose()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path
