"""Fixtures for the server tests: a seeded view, an in-process server on real sockets, and
a small HTTP client that can bind its source address (so the caller is a chosen VM)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httptools
import pytest
import trio

from imds_replica import Event, LivelinessPolicy, LivelinessTracker, MemoryLog, View
from imds_server import Address, Server, ServerConfig
from imds_server._demo import compute, network

VM_A = "vm-a"
VM_B = "vm-b"
CALLER_A = "127.0.0.2"
CALLER_B = "127.0.0.3"
EVENT_ID = "E1"
V = "2021-02-01"
MD = {"Metadata": "true"}


def fleet_events() -> list[Event]:
    """Two VMs behind 127.0.0.2 and 127.0.0.3, with tags and one scheduled event on A."""
    out = []
    for index, (vm, name, caller) in enumerate(((VM_A, "vm-a-name", CALLER_A),
                                                (VM_B, "vm-b-name", CALLER_B))):
        out.append(Event("fabric", ("vms", vm, "compute"), 10, compute(vm, name, index)))
        out.append(Event("fabric", ("vms", vm, "network"), 10, network(index)))
        out.append(Event("tags", ("vms", vm, "compute", "tags"), 10, f"owner:{name};env:test"))
        out.append(Event("hostnet", ("callers", caller), 1, vm))
    out.append(Event("fabric", ("vms", VM_A, "scheduledevents", EVENT_ID), 20,
                     {"EventType": "Reboot", "Resources": ["vm-a-name"],
                      "NotBefore": "Mon, 19 Sep 2016 18:29:47 GMT"}))
    return out


@pytest.fixture
def view() -> View:
    view = View()
    for event in fleet_events():
        view.apply(event)
    return view


@pytest.fixture
def liveliness() -> LivelinessTracker:
    tracker = LivelinessTracker({"fabric": LivelinessPolicy.pushed(),
                                 "hostnet": LivelinessPolicy.pushed()})
    for source in ("fabric", "tags", "hostnet"):
        tracker.contact(source, 1000.0)
    return tracker


def make_config(**changes: Any) -> ServerConfig:
    base = ServerConfig(listen=Address("127.0.0.1", 0), admin_listen=Address("127.0.0.1", 0),
                        header_timeout=2.0, idle_timeout=5.0, shutdown_grace=5.0)
    return attrs.evolve(base, **changes)


@asynccontextmanager
async def running(config: ServerConfig | None = None, *, log: MemoryLog | None = None,
                  seed: Sequence[Event] | None = None, **kwargs: Any) -> AsyncIterator[Server]:
    """An in-process server on ephemeral loopback ports, seeded with the test fleet."""
    log = log if log is not None else MemoryLog()
    server = Server(config or make_config(), log=log, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        replica = await server.wait_ready()
        batch = list(fleet_events() if seed is None else seed)
        if batch:
            await replica.submit(batch)
        try:
            yield server
        finally:
            server.shutdown()
            await server.stopped.wait()


@attrs.frozen
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


class _Collect:
    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.parser: httptools.HttpResponseParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        assert self.parser is not None
        self.replies.append(Reply(self.parser.get_status_code(), self.headers,
                                  bytes(self.body)))
        self.headers, self.body = {}, bytearray()


async def connect(address: tuple[str, int], source: str = CALLER_A) -> trio.SocketStream:
    sock = trio.socket.socket()
    try:
        await sock.bind((source, 0))
        await sock.connect(address[:2])
    except BaseException:
        sock.close()  # refused (a reset at accept): no unclosed socket left behind
        raise
    return trio.SocketStream(sock)


async def exchange(address: tuple[str, int], data: bytes, *, source: str = CALLER_A,
                   expect: int = 1, head: bool = False) -> list[Reply]:
    """Send raw bytes on a fresh connection; read until ``expect`` replies or close."""
    collect = _Collect()
    parser = httptools.HttpResponseParser(collect)
    collect.parser = parser
    stream = await connect(address, source)
    async with stream:
        await stream.send_all(data)
        with trio.fail_after(10):
            while len(collect.replies) < expect:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                if head:  # a HEAD answer has no body: the parser cannot know that
                    collect.replies.append(Reply(int(chunk.split(b" ")[1]), {}, b""))
                    break
                parser.feed_data(chunk)
    return collect.replies


def request_bytes(method: str, target: str, headers: Mapping[str, str] | None = None,
                  body: bytes = b"", *, close: bool = True) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 169.254.169.254"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def get(address: tuple[str, int], target: str, *, headers: Mapping[str, str] | None = MD,
              source: str = CALLER_A, method: str = "GET", body: bytes = b"") -> Reply:
    replies = await exchange(address, request_bytes(method, target, headers, body),
                             source=source, head=method == "HEAD")
    assert replies, f"no reply to {method} {target}"
    return replies[0]


async def wait_until(predicate: Callable[[], bool], seconds: float = 10) -> None:
    """Poll a condition of another process or socket peer (no event to wait on)."""
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        await trio.sleep(0.01)
    raise AssertionError("condition not reached in time")
