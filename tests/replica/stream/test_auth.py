"""Creds-file (JWT + nkey) and TLS authentication against a real nats-server, through
the server config's ``[[source]]`` keys ``credentials`` and ``tls-ca``: the source reads
with the right credentials, and the wrong ones (a user no account signed, no creds, a
certificate of another CA, no CA) are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from imds_replica import Event, MemoryLog, open_replica
from imds_replica._stream._bridge import Connection
from imds_replica._stream._publisher import Publisher
from imds_replica._stream._source import StreamSource, stream_source_from_settings
from imds_replica._stream._transport import ConnectOptions, TransportError
from imds_replica._stream._wire import stream_name, stream_subjects
from tests._nats import NatsServer

from ._auth import Operator, tls_files

pytestmark = pytest.mark.integration
KEY = ("vms", "vm-1", "compute", "name")
CLUSTER = "auth"


async def _open(options: ConnectOptions) -> None:
    conn = await Connection.open(options, give_up_after=3.0)
    await conn.aclose()  # reached only if it was let in: the caller then fails


async def _refused(options: ConnectOptions, why: str) -> None:
    """The connection is refused, and the error says ``why`` (what nats-py last saw)."""
    with pytest.raises(TransportError, match=why):
        await _open(options)


async def _round_trip(admin: ConnectOptions, source: StreamSource) -> None:
    """Create the stream and publish with ``admin``; ``source`` must receive it."""
    conn = await Connection.open(admin)
    try:
        await conn.add_stream(name=stream_name(CLUSTER), subjects=stream_subjects(CLUSTER),
                              max_consumers=10, replicas=1)
        report = await Publisher(conn, cluster=CLUSTER).publish(
            [Event("fleet", KEY, 1, "through auth")], host="host-1")
        assert report.published == 1
    finally:
        await conn.aclose()
    async with open_replica(MemoryLog(), sources=[source]) as replica:
        with trio.fail_after(20):
            while replica.view.get(KEY) is None:  # noqa: ASYNC110 - polls the view
                await trio.sleep(0.05)
        register = replica.view.get(KEY)
        assert register is not None
        assert register.value == "through auth"
        assert source.statistics().connected


def _source(settings: dict[str, Any]) -> StreamSource:
    source = stream_source_from_settings(
        "fleet", {"cluster": CLUSTER, "host": "host-1", **settings}, None)
    source.fetch_timeout, source.heartbeat = 1.0, 0.25
    return source


async def test_a_creds_file_authenticates_and_a_stranger_is_refused(tmp_path: Path) -> None:
    operator = Operator()
    server = NatsServer(tmp_path / "nats", config=operator.server_config()).start()
    try:
        region = operator.creds(tmp_path / "region.creds", "region")
        host = operator.creds(tmp_path / "host-1.creds", "host-1")
        await _round_trip(ConnectOptions(servers=(server.url,), credentials=region),
                          _source({"servers": [server.url], "credentials": str(host)}))
        stranger = operator.creds(tmp_path / "stranger.creds", "x",
                                  signer=Operator.stranger())
        await _refused(ConnectOptions(servers=(server.url,), credentials=stranger,
                                      connect_timeout=2.0), "(?i)authoriz")
        await _refused(ConnectOptions(servers=(server.url,), connect_timeout=2.0),
                       "(?i)authoriz")
    finally:
        server.kill()


async def test_tls_ca_verifies_the_server_and_another_ca_is_refused(tmp_path: Path) -> None:
    ca, cert, key = tls_files(tmp_path / "tls")
    other_ca, _, _ = tls_files(tmp_path / "tls", "other")
    server = NatsServer(tmp_path / "nats", config=(
        f'tls {{\n  cert_file: "{cert}"\n  key_file: "{key}"\n}}\n')).start()
    url = f"tls://127.0.0.1:{server.port}"
    try:
        await _round_trip(ConnectOptions(servers=(url,), tls_ca=ca),
                          _source({"servers": [url], "tls-ca": str(ca)}))
        await _refused(ConnectOptions(servers=(url,), tls_ca=other_ca, connect_timeout=2.0),
                       "(?i)certificate verify failed")
        await _refused(ConnectOptions(servers=(url,), connect_timeout=2.0),
                       "(?i)certificate verify failed")
    finally:
        server.kill()
