"""The trio shell around the HTTP framing: accept with limits, then serve a connection.

A connection loop reads, feeds ``HttpConnection``, answers complete requests in order
(pipelining), and enforces the timeouts: ``header_timeout`` from a request's first byte
(or from accept) until it is complete — a slowloris gets 408 and is closed — and
``idle_timeout`` between keep-alive requests. Garbage gets its 4xx and a close; no input
can raise past a connection, so the server keeps answering everyone else.

Draining (SIGTERM) stops accepting, closes keep-alive connections between requests, and
lets each in-flight request finish; a connection accepted but not yet spoken on still gets
its first request answered (it may have been queued for us by the kernel).
"""

from __future__ import annotations

import errno
import socket
import sys
import traceback
from collections import Counter
from typing import Protocol

import attrs
import trio

from ._http import (
    LAST_CHUNK,
    HttpConnection,
    HttpLimits,
    ProtocolError,
    encode_chunk,
    encode_head,
    error_bytes,
)
from ._listen import peer_host, set_ttl
from ._request import Request, Response, error

_ACCEPT_RETRY = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_ACCEPT_SKIP = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}


@attrs.frozen
class ConnectionLimits:
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 4096
    max_connections_per_caller: int = 64
    receive_size: int = 65536


class App(Protocol):
    async def respond(self, request: Request, peer: str) -> Response: ...

    def answered(self, request: Request, peer: str, response: Response, received: float,
                 sent: int, seconds: float) -> None: ...


@attrs.define
class ListenerStatistics:
    open: int = 0
    accepted: int = 0
    refused: int = 0  # closed at accept: over the total or per-caller limit
    protocol_errors: int = 0
    timeouts: int = 0
    internal_errors: int = 0


class Listener:
    """Accepts on one listening socket and serves its connections until drained."""

    def __init__(self, sock: socket.socket, app: App, *, http: HttpLimits,
                 limits: ConnectionLimits, ttl: int = 0, clock: trio.abc.Clock | None = None,
                 wall: object = None) -> None:
        self.socket = trio.socket.from_stdlib_socket(sock)
        self.address = sock.getsockname()
        self.app = app
        self.http = http
        self.limits = limits
        self.ttl = ttl
        self.stats = ListenerStatistics()
        self.draining = False
        self._per_caller: Counter[str] = Counter()
        self._idle: set[trio.CancelScope] = set()
        self._accepting = trio.CancelScope()

    def drain(self) -> None:
        """Stop accepting and close idle keep-alive connections; in-flight ones finish."""
        self.draining = True
        self._accepting.cancel()
        for scope in list(self._idle):
            scope.cancel()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        async with trio.open_nursery() as nursery:
            with self._accepting:
                task_status.started()
                await self._accept_loop(nursery)
            self.socket.close()

    async def _accept_loop(self, nursery: trio.Nursery) -> None:
        while True:
            try:
                conn, addr = await self.socket.accept()
            except OSError as exc:
                if exc.errno in _ACCEPT_RETRY:
                    await trio.sleep(0.1)  # out of descriptors: let connections finish
                    continue
                if exc.errno in _ACCEPT_SKIP:
                    continue
                raise
            peer = peer_host(addr)
            if (self.stats.open >= self.limits.max_connections
                    or self._per_caller[peer] >= self.limits.max_connections_per_caller):
                self.stats.refused += 1
                conn.close()
                continue
            try:
                set_ttl(conn, self.ttl)  # type: ignore[arg-type]
            except OSError:
                conn.close()
                continue
            self.stats.accepted += 1
            self.stats.open += 1
            self._per_caller[peer] += 1
            nursery.start_soon(self._connection, trio.SocketStream(conn), peer)

    async def _connection(self, stream: trio.SocketStream, peer: str) -> None:
        try:
            async with stream:
                await self._serve(stream, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the peer went away; nothing to answer
        finally:
            self.stats.open -= 1
            self._per_caller[peer] -= 1
            if not self._per_caller[peer]:
                del self._per_caller[peer]

    async def _serve(self, stream: trio.SocketStream, peer: str) -> None:
        conn = HttpConnection(self.http)
        deadline = trio.current_time() + self.limits.header_timeout
        while True:
            item = conn.next_request()
            if item is None:
                idle = conn.requests > 0 and not conn.mid_request
                if idle and self.draining:
                    return
                with trio.CancelScope(deadline=deadline) as scope:
                    if idle:
                        self._idle.add(scope)
                    try:
                        data = await stream.receive_some(self.limits.receive_size)
                    finally:
                        self._idle.discard(scope)
                if scope.cancelled_caught:
                    if conn.mid_request:
                        self.stats.timeouts += 1
                        await stream.send_all(error_bytes(408, "request not complete in time"))
                    return
                if not data:
                    return
                if idle:  # the next request's first byte: it has header_timeout to finish
                    deadline = trio.current_time() + self.limits.header_timeout
                try:
                    conn.feed(data)
                except ProtocolError as exc:
                    self.stats.protocol_errors += 1
                    await stream.send_all(error_bytes(exc.status, exc.message))
                    return
                continue
            request, keep_alive = item
            received = trio.current_time()
            response = await self._respond(request, peer)
            keep_alive = keep_alive and not self.draining
            sent = await self._send(stream, request, response, keep_alive)
            self.app.answered(request, peer, response, received, sent,
                              trio.current_time() - received)
            if not keep_alive:
                return
            deadline = trio.current_time() + self.limits.idle_timeout

    async def _respond(self, request: Request, peer: str) -> Response:
        try:
            return await self.app.respond(request, peer)
        except Exception:  # a bug of ours: answer 500 (clients retry), keep serving
            self.stats.internal_errors += 1
            traceback.print_exc(file=sys.stderr)
            return error(500, "Internal error")

    async def _send(self, stream: trio.SocketStream, request: Request, response: Response,
                    keep_alive: bool) -> int:
        head_only = request.method == "HEAD"
        if response.stream is None:
            data = encode_head(response, keep_alive=keep_alive, head_only=head_only)
            await stream.send_all(data)
            return 0 if head_only else len(response.body)
        await stream.send_all(encode_head(response, keep_alive=keep_alive, head_only=True,
                                          chunked=True))
        sent = 0
        if not head_only:
            async for chunk in response.stream:
                if chunk:
                    sent += len(chunk)
                    await stream.send_all(encode_chunk(chunk))
            await stream.send_all(LAST_CHUNK)
        return sent
