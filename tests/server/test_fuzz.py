"""Hypothesis-generated malformed requests against one running server: never a 5xx, never
a crash, and the server still answers a good request after each."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imds_server import Server

from .conftest import fleet_events, make_config

pytestmark = pytest.mark.integration

GOOD = (b"GET /metadata/instance/compute/name?api-version=2021-02-01&format=text HTTP/1.1\r\n"
        b"Host: x\r\nMetadata: true\r\nConnection: close\r\n\r\n")


@pytest.fixture(scope="module")
def server_address() -> Iterator[tuple[str, int]]:
    """A server in a thread of its own, for the whole module (examples are many)."""
    ready = threading.Event()
    box: dict[str, object] = {}

    async def main() -> None:
        server = Server(make_config(rate_limit=0.0, header_timeout=0.5, max_body_bytes=4096))
        box["server"] = server
        box["token"] = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            replica = await server.wait_ready()
            await replica.submit(fleet_events())
            box["address"] = server.vm_address
            ready.set()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield box["address"]  # type: ignore[misc]
    server = box["server"]
    assert isinstance(server, Server)
    trio.from_thread.run_sync(server.shutdown, trio_token=box["token"])  # type: ignore[arg-type]
    thread.join(10)
    assert server.statistics().internal_errors == 0


def _send(address: tuple[str, int], data: bytes) -> bytes:
    """Send ``data`` as VM A (so requests reach past the caller check); read to close."""
    with socket.socket() as sock:
        sock.settimeout(5)
        sock.bind(("127.0.0.2", 0))
        sock.connect(address)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError:  # reset by the server after an error answer: allowed
            pass
    return b"".join(chunks)


def _good(address: tuple[str, int]) -> bytes:
    with socket.socket() as sock:
        sock.settimeout(5)
        sock.bind(("127.0.0.2", 0))
        sock.connect(address)
        sock.sendall(GOOD)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


_TOKENS = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"\x00", b" ", b"\r\n", b":",
                           b"HTTP/1.1", b"HTTP/9.9", b"/metadata/instance", b"?", b"&", b"=",
                           b"api-version=2021-02-01", b"%", b"%ff", b"Metadata: true",
                           b"Content-Length: 5", b"Content-Length: -1",
                           b"Transfer-Encoding: chunked", b"X-Forwarded-For: 1",
                           b"\xff\xfe", b"0\r\n\r\n", b"Host:"])
REQUESTS = st.one_of(
    st.binary(max_size=300),
    st.lists(_TOKENS, max_size=30).map(b"".join),
    st.builds(lambda a, b: GOOD[:a] + b + GOOD[a:], st.integers(0, len(GOOD)),
              st.binary(min_size=1, max_size=20)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(data=REQUESTS)
def test_malformed_requests_never_5xx(server_address: tuple[str, int], data: bytes) -> None:
    answer = _send(server_address, data)
    for line in answer.split(b"\r\n"):
        if line.startswith(b"HTTP/1.1 "):
            status = int(line.split()[1])
            assert status < 500, answer[:300]
    assert b"vm-a-name" in _good(server_address)
