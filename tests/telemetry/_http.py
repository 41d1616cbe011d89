"""A small real HTTP/1.1 server for tests (one request per connection), on loopback.

Tests mount telemetry's framework-neutral routes here (``TelemetryRoutes``, without a
whole server); it also plays a fake VM-facing endpoint (probe) and a misbehaving collector
(errors, slowness).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import trio


@attrs.frozen
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes


@attrs.frozen
class Reply:
    status: int = 200
    body: bytes | AsyncIterator[bytes] = b""
    content_type: str = "application/json"


Handler = Callable[[Request], Awaitable[Reply]]


async def _read_request(stream: trio.SocketStream) -> Request | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None
        body += chunk
    url = urlsplit(target)
    return Request(method, url.path, dict(parse_qsl(url.query)), headers, body)


async def _connection(stream: trio.SocketStream, handler: Handler) -> None:
    async with stream:
        request = await _read_request(stream)
        if request is None:
            return
        reply = await handler(request)
        head = (f"HTTP/1.1 {reply.status} X\r\nContent-Type: {reply.content_type}\r\n"
                "Connection: close\r\n")
        if isinstance(reply.body, bytes):
            await stream.send_all(
                f"{head}Content-Length: {len(reply.body)}\r\n\r\n".encode() + reply.body)
            return
        await stream.send_all(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
        async for chunk in reply.body:
            if chunk:
                await stream.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await stream.send_all(b"0\r\n\r\n")


async def serve(handler: Handler, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve on 127.0.0.1, an ephemeral port; ``task_status.started(port)``."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, lambda s: _connection(s, handler), listeners)
        task_status.started(port)
