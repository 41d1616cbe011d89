"""The trio shell around the HTTP framing: accept with limits, then serve a connection.

A connection loop reads, feeds ``HttpConnection``, answers complete requests in order
(pipelining), and enforces the timeouts: ``header_timeout`` from a request's first byte
(or from accept) until it is complete — a slowloris gets 408 and is closed — and
``idle_timeout`` between keep-alive requests. Garbage gets its 4xx and a close; no input
can raise past a connection, so the server keeps answering everyone else.

Draining (SIGTERM) stops accepting, closes keep-alive connections between requests, and
lets each in-flight request finish; a connection accepted but not yet spoken on still gets
its first request answered (it may have been queued for us by the kernel).

Cost on the read path. This loop is most of the server's CPU per request, so:

* Timeouts are enforced by one sweeper task per listener, not by a cancel scope with a
  deadline per receive. Each connection has one cancel scope for its life and a
  ``deadline`` it sets while it waits for bytes; the sweeper ticks (a tenth of the shorter
  timeout, at most 1 s), keeps a coarse clock, and cancels connections waiting past their
  deadline. Deadlines are computed from the coarse clock plus one tick, so a timeout
  never fires early and at most two ticks late.
* Sockets are used directly (non-blocking ``recv``/``send`` and ``wait_readable`` /
  ``wait_writable``) rather than through ``SocketStream``, whose every receive and send
  also yields to the scheduler (two scheduler round trips per request). One yield per
  answer instead, after it is sent, when no further request is already in: the client
  waits for that answer before it sends its next request, so receiving at once would
  find nothing (a failed recv, an epoll registration and a wake-up per request, measured
  as most of the gap to the bare server); after the yield the next request is usually in.
  Bytes already waiting, and pipelined requests already parsed, are processed at once,
  but after ``_YIELD_EVERY`` such steps without a yield the connection takes a
  checkpoint, so a pipelining client cannot starve the others. A VM
  over its rate limit gets less: one answer per scheduler pass among all its connections
  (``_Turn``), so that a flood's many connections cannot fill a pass between two polls.
* A receive holding a pipelined burst is parsed ``_FEED_SLICE`` bytes at a time, as its
  requests are answered, so one receive's parse is bounded too.
* Answers are sent from ``WireCache``: the VM API reuses one immutable ``Response`` per
  answer and second, whose head and body are encoded once.
* The per-request clock is ``time.perf_counter`` (the access record's ``seconds``).

A request that may park (``wait_for_change``) is answered while the listener's hang-up
monitor watches its socket: if the client goes away meanwhile, the request is cancelled,
which releases its per-VM watcher slot at once instead of at its timeout. (A client that
half-closes its side while parked counts as gone, as in most servers' long-polling.)
"""

from __future__ import annotations

import errno
import json
import math
import select
import socket
import struct
import sys
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs
import trio
from trio.lowlevel import (
    cancel_shielded_checkpoint,
    checkpoint,
    checkpoint_if_cancelled,
    notify_closing,
    wait_readable,
    wait_writable,
)

from ._http import (
    LAST_CHUNK,
    HttpConnection,
    HttpLimits,
    ProtocolError,
    WireCache,
    encode_chunk,
    encode_head,
    error_bytes,
)
from ._listen import peer_host, set_ttl
from ._ratelimit import TokenBuckets
from ._request import Request, Response, error
from ._watch import Reply

_ACCEPT_RETRY = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_ACCEPT_SKIP = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}
_INF = math.inf
_YIELD_EVERY = 16  # steps a connection may run without yielding (see _loop)
_FEED_SLICE = 4096  # bytes parsed at a time (see _loop)
_REFUSALS_PER_YIELD = 8  # connections refused at accept between two yields (~0.3 ms)
_REFUSAL_PAUSE = 0.1  # seconds a connection waits after a 429 before its next request
_REFUSAL_RESET = 1.0  # a request this long after the last 429 starts the count anew


@attrs.frozen
class ConnectionLimits:
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 4096
    max_connections_per_caller: int = 64
    receive_size: int = 65536
    #: Connections all unknown callers share, within ``max_connections`` (the rest is
    #: kept for known VMs). None: callers are not told apart (the admin listener).
    max_unknown_connections: int | None = None
    #: New connections per second per unknown address (0: not throttled).
    unknown_rate_limit: float = 0.0
    unknown_rate_burst: float = 10.0
    #: Seconds an answer may wait for the client to read it (a full socket buffer).
    send_timeout: float = 30.0
    #: Seconds a request body may take once its head is in; None: ``header_timeout``
    #: covers head and body together.
    body_timeout: float | None = None
    #: 429s in a row after which a connection is closed (0: never).
    refusals_before_close: int = 0


_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


def _reset(conn: socket.socket) -> None:
    """Close a stranger's connection refused at accept with a reset rather than a FIN. An
    orderly close leaves the socket in TIME_WAIT on our side for a minute: strangers
    re-opening thousands of connections a second as they are refused filled the kernel's
    TIME_WAIT table (131,072 sockets) within seconds."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    conn.close()


class CloseConnection(Exception):
    """Raised by an ``App``'s ``respond`` to close the connection without an answer (the
    server's own apps never do; test mode's dropped-connection fault does)."""


class App(Protocol):
    async def respond(self, request: Request, peer: str) -> Response: ...

    def answered(self, request: Request, peer: str, response: Response, received: float,
                 sent: int, seconds: float) -> None: ...


@attrs.define
class ListenerStatistics:
    open: int = 0
    accepted: int = 0
    refused: int = 0  # closed at accept: over the total or per-caller limit
    refused_unknown: int = 0  # of which unknown callers: over their budget or throttled
    refused_unknown_throttled: int = 0  # of those, by the per-address accept throttle
    unknown_open: int = 0  # open connections of unknown callers
    send_timeouts: int = 0  # closed: the client did not read its answer in time
    closed_after_refusals: int = 0  # closed: kept sending after refusals_before_close 429s
    protocol_errors: int = 0
    timeouts: int = 0
    internal_errors: int = 0
    disconnected_watchers: int = 0  # parked requests cancelled because the client left


class _Conn:
    """What the sweeper and ``drain`` need to see of a connection."""

    __slots__ = ("deadline", "idle", "scope", "sending", "timed_out")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.deadline = _INF  # finite only while waiting for request bytes, or to send
        self.idle = False  # waiting between keep-alive requests (drain may close it)
        self.timed_out = False
        self.sending = False  # waiting for the client to read (a timeout is not a 408)


class _Turn:
    """A VM over its rate limit (a 429 less than ``_REFUSAL_RESET`` ago): its connections
    take turns, one answer per scheduler pass among all of them.

    Without it, a flood's connections paused after their 429s woke in the same scheduler
    pass and were all answered in it (32 connections: several milliseconds in which no
    other VM's request was even read, since I/O is polled between passes). The turn is a
    fair lock taken and given back before each answer: taking it always yields (a lock
    free at once still ends the task's step), and giving it back hands it to the next
    waiting connection, which runs only in the next pass."""

    __slots__ = ("lock", "until")

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.until = 0.0  # perf_counter time at which the last 429 stops counting

    async def wait(self) -> None:
        await self.lock.acquire()
        self.lock.release()


class _HangupMonitor:
    """Notices clients that hang up while their request is parked.

    A parked connection is not read (its next bytes belong to the next request), so a
    hang-up would go unseen until the park ends. Rather than a reader task per parked
    request, one task per listener waits on a private epoll set of the parked sockets,
    registered for ``EPOLLRDHUP`` only (the peer shut its side; pipelined data does not
    wake it), and cancels the request of each socket that reports a hang-up or an error.

    Registered one-shot: a watcher answered by a change's fan-out (``_watch``) whose
    client read the answer and closed reports its hang-up once, and is left for ``forget``
    to unregister when its task runs; unregistering there and then cost the fan-out of
    10,000 watchers a quarter of its time (the monitor ran between its batches)."""

    def __init__(self, stats: ListenerStatistics) -> None:
        self._stats = stats
        self._epoll = select.epoll()
        self._conns: dict[int, tuple[_Conn, Reply | None]] = {}

    def watch(self, fd: int, state: _Conn, reply: Reply | None = None) -> None:
        self._epoll.register(fd, select.EPOLLRDHUP | select.EPOLLONESHOT)
        self._conns[fd] = (state, reply)

    def forget(self, fd: int) -> None:
        if self._conns.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    async def run(self) -> None:
        while True:
            await wait_readable(self._epoll)
            for fd, _events in self._epoll.poll(0):  # only hang-ups and errors are asked
                entry = self._conns.get(fd)
                if entry is not None:
                    state, reply = entry
                    if reply is not None and reply.response is not None:
                        # Answered by a change's fan-out, its task not run yet: a client
                        # that read its answer and left is no disconnected watcher (and
                        # one-shot, the socket does not report again: ``forget`` it later).
                        continue
                    del self._conns[fd]
                    self._epoll.unregister(fd)
                    self._stats.disconnected_watchers += 1
                    state.scope.cancel()

    def close(self) -> None:
        self._epoll.close()


class Listener:
    """Accepts on one listening socket and serves its connections until drained."""

    def __init__(self, sock: socket.socket, app: App, *, http: HttpLimits,
                 limits: ConnectionLimits, ttl: int = 0,
                 known: Callable[[str], bool] | None = None) -> None:
        sock.setblocking(False)
        self.socket = sock
        self.address = sock.getsockname()
        self.app = app
        self.http = http
        self.limits = limits
        self.ttl = ttl
        self.stats = ListenerStatistics()
        self.draining = False
        #: Whether a peer address is a known caller (a VM); None: everyone is.
        self.known = known if limits.max_unknown_connections is not None else None
        # Strangers' addresses are the strangers' choice: a small table, so that the sweep
        # when it is full (rare, amortised) costs the accept loop a few milliseconds.
        self._throttle = (TokenBuckets(limits.unknown_rate_limit, limits.unknown_rate_burst,
                                       max_keys=4096)
                          if limits.unknown_rate_limit > 0 else None)
        self._per_caller: Counter[str] = Counter()
        self._turns: dict[str, _Turn] = {}  # VMs over their rate limit (see _Turn)
        self._conns: set[_Conn] = set()
        self._accepting = trio.CancelScope()
        self._wire = WireCache()
        self._hangups = _HangupMonitor(self.stats)
        #: The app's ``respond_watching(request, peer, reply)``, if it has one: a request
        #: that may park is then answered with a ``Reply`` (see ``_watch``).
        self._respond_with_reply: Callable[[Request, str, Reply], Awaitable[Response]] | \
            None = getattr(app, "respond_watching", None)
        shortest = min(limits.header_timeout, limits.idle_timeout)
        self._tick = min(1.0, max(0.01, shortest / 10))
        self._now = 0.0  # the sweeper's coarse clock (trio time); set in serve()

    def drain(self) -> None:
        """Stop accepting and close idle keep-alive connections; in-flight ones finish."""
        self.draining = True
        self._accepting.cancel()
        for state in list(self._conns):
            if state.idle:
                state.scope.cancel()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        self._now = trio.current_time()
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(self._sweep)
                outer.start_soon(self._hangups.run)
                async with trio.open_nursery() as nursery:
                    with self._accepting:
                        task_status.started()
                        await self._accept_loop(nursery)
                    notify_closing(self.socket)
                    self.socket.close()
                outer.cancel_scope.cancel()  # every connection has ended: stop the helpers
        finally:
            self._hangups.close()

    async def _sweep(self) -> None:
        """Cancel connections waiting for bytes past their deadline (one timer for all)."""
        while True:
            await trio.sleep(self._tick)
            now = self._now = trio.current_time()
            for state in self._conns:
                if state.deadline <= now:
                    state.timed_out = True
                    state.deadline = _INF
                    state.scope.cancel()
            if self._turns:  # forget the turns of VMs back under their limit
                clock = time.perf_counter()
                for peer in [p for p, t in self._turns.items()
                             if t.until <= clock and not t.lock.locked()]:
                    del self._turns[peer]

    def _deadline(self, timeout: float) -> float:
        # The coarse clock lags by up to a tick: adding one keeps a timeout from firing early.
        return self._now + timeout + self._tick

    async def _accept_loop(self, nursery: trio.Nursery) -> None:
        listener = self.socket
        refusals = 0  # connections refused at accept since the last yield
        while True:
            # As trio's own accept: stop here once draining, never after accepting (a
            # connection accepted is served; the kernel's queue waits for the next process).
            await checkpoint_if_cancelled()
            try:
                conn, addr = listener.accept()
            except BlockingIOError:
                refusals = 0
                await wait_readable(listener)
                continue
            except OSError as exc:
                if exc.errno in _ACCEPT_RETRY:
                    await trio.sleep(0.1)  # out of descriptors: let connections finish
                    continue
                if exc.errno in _ACCEPT_SKIP:
                    continue
                raise
            peer = peer_host(addr)
            unknown = self.known is not None and not self.known(peer)
            if unknown and self._refuse_unknown(peer):
                self.stats.refused_unknown += 1
                refuse = True
            else:
                refuse = (self.stats.open >= self.limits.max_connections or
                          self._per_caller[peer] >= self.limits.max_connections_per_caller)
            if refuse:
                # Cheap: no answer, no task (an unknown caller gets only 403s). A flood of
                # connects is refused a few at a time between yields: a scheduler round
                # per refusal was a third of its cost (15,000 refusals/s measured).
                self.stats.refused += 1
                if unknown:
                    _reset(conn)
                else:
                    conn.close()  # a VM over its limit: an orderly close (end of stream)
                refusals += 1
                if refusals >= _REFUSALS_PER_YIELD:
                    refusals = 0
                    await cancel_shielded_checkpoint()
                continue
            refusals = 0
            await cancel_shielded_checkpoint()  # a flood must not starve the others
            try:
                conn.setblocking(False)
                if conn.family in (socket.AF_INET, socket.AF_INET6):
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                set_ttl(conn, self.ttl)
            except OSError:
                conn.close()
                continue
            self.stats.accepted += 1
            self.stats.open += 1
            self._per_caller[peer] += 1
            if unknown:
                self.stats.unknown_open += 1
            nursery.start_soon(self._connection, conn, peer, unknown)

    def _refuse_unknown(self, peer: str) -> bool:
        """Unknown callers share a small budget, within the total, so that known VMs
        always find a connection; each unknown address is throttled at accept."""
        limit = self.limits.max_unknown_connections
        assert limit is not None
        if self.stats.unknown_open >= limit:
            return True
        if self._throttle is not None and self._throttle.take(peer, trio.current_time()):
            self.stats.refused_unknown_throttled += 1
            return True
        return False

    async def _connection(self, sock: socket.socket, peer: str, unknown: bool = False
                          ) -> None:
        # One coroutine frame fewer per connection than a separate serve step: a parked
        # watcher's whole stack stays alive (and is walked by every full GC collection).
        state = _Conn()
        self._conns.add(state)
        try:
            conn = HttpConnection(self.http)
            with state.scope:
                await self._loop(sock, peer, state, conn)
            if state.timed_out and state.sending:  # the client did not read its answer
                self.stats.send_timeouts += 1
            elif state.timed_out and conn.mid_request:  # by the sweeper, or the loop
                self.stats.timeouts += 1
                with trio.move_on_after(self.limits.send_timeout):
                    await self._send_all(sock, error_bytes(408, "request not complete in time"),
                                         state)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away (or we closed after an answer): nothing to answer
        finally:
            self._conns.discard(state)
            notify_closing(sock)
            sock.close()
            self.stats.open -= 1
            if unknown:
                self.stats.unknown_open -= 1
            self._per_caller[peer] -= 1
            if not self._per_caller[peer]:
                del self._per_caller[peer]

    async def _loop(self, sock: socket.socket, peer: str, state: _Conn,
                    conn: HttpConnection) -> None:
        limits = self.limits
        size = limits.receive_size
        clock = time.perf_counter
        streak = 0  # steps (answers, receives that did not block) since the last yield
        refusals = 0  # 429s on this connection, each less than _REFUSAL_RESET after the last
        last_refusal = 0.0
        body_timeout = limits.body_timeout
        body_started = False  # the current request's body deadline is set
        rest = b""  # received, not parsed yet
        state.deadline = self._deadline(limits.header_timeout)
        while True:
            item = conn.next_request()
            if item is None:
                idle = conn.requests > 0 and not conn.mid_request
                if idle and self.draining and not rest:
                    return
                if state.deadline <= self._now:  # a dribbling slowloris
                    state.timed_out = True
                    return
                if rest:
                    data, rest = rest[:_FEED_SLICE], rest[_FEED_SLICE:]
                    streak += 1
                    if streak >= _YIELD_EVERY:
                        streak = 0
                        await checkpoint()
                else:
                    try:
                        data = sock.recv(size)
                    except BlockingIOError:
                        streak = 0
                        state.idle = idle
                        try:
                            data = await self._receive(sock, size)
                        finally:
                            state.idle = False
                    else:
                        # Bytes were already waiting (usual under load: the request came
                        # while we answered others): go on without yielding, within the
                        # bound below.
                        streak += 1
                        if streak >= _YIELD_EVERY:
                            streak = 0
                            await checkpoint()
                    if not data:
                        return
                    if idle:  # the next request's first byte: header_timeout to finish
                        state.deadline = self._deadline(limits.header_timeout)
                    if len(data) > _FEED_SLICE:
                        # A pipelined burst is parsed a slice at a time, as its requests
                        # are answered: 64 KiB of small requests parsed at once held the
                        # loop for tens of milliseconds (and a flood closed after its 429s
                        # is never parsed at all).
                        data, rest = data[:_FEED_SLICE], data[_FEED_SLICE:]
                try:
                    conn.feed(data)
                except ProtocolError as exc:
                    self.stats.protocol_errors += 1
                    state.deadline = _INF  # answering now: not a 408 as well
                    # HTTP/0.9 has no status line or headers: the body alone is its answer.
                    answer = (json.dumps({"error": exc.message}).encode() + b"\n"
                              if exc.bare else error_bytes(exc.status, exc.message))
                    await self._send_all(sock, answer, state)
                    return
                if body_timeout is not None and not body_started and conn.in_body:
                    # The head is in: the body has its own deadline (an admin upload of
                    # megabytes is not a slowloris).
                    body_started = True
                    state.deadline = self._deadline(body_timeout)
                continue
            request, keep_alive = item
            body_started = False
            state.deadline = _INF  # no timeout while answering (a watcher parks)
            received = clock()
            turn = self._turns.get(peer)
            if turn is not None and received < turn.until:
                await turn.wait()  # over its limit: one answer per pass among its connections
            reply = None
            head_only = request.method == "HEAD"
            try:
                if "wait_for_change" in request.target and request.method in ("GET", "HEAD"):
                    if self._respond_with_reply is not None:
                        reply = Reply(sock, self._wire, keep_alive, head_only)
                    response = await self._respond_watching(sock, state, request, peer, reply)
                else:
                    try:
                        response = await self.app.respond(request, peer)
                    except CloseConnection:
                        raise
                    except Exception:
                        response = self._failed()
            except CloseConnection:
                return
            keep_alive = keep_alive and not self.draining
            pause = False
            refused = response.refused
            if refused is None:
                if refusals and received - last_refusal >= _REFUSAL_RESET:
                    refusals = 0  # it waited as told
            elif refused == "unknown-caller":
                keep_alive = False  # a stranger's connection ends with its 403
            elif response.status == 429:
                # Over its limit: this connection gets less of the loop (a pause before its
                # next request: the bytes wait in the kernel, and a pipelining flood is
                # held to a few requests a second), and one that keeps on regardless, asking
                # again before a second has passed, is closed.
                if refusals and received - last_refusal >= _REFUSAL_RESET:
                    refusals = 0
                refusals += 1
                last_refusal = received
                pause = True
                turn = self._turns.get(peer)
                if turn is None:
                    turn = self._turns[peer] = _Turn()
                turn.until = received + _REFUSAL_RESET
                if limits.refusals_before_close and refusals >= limits.refusals_before_close:
                    keep_alive = False
                    self.stats.closed_after_refusals += 1
            done = 0.0  # when the answer was sent, if that was not just now
            if reply is not None and reply.response is response:
                # A change's fan-out answered on this connection (encoded with the request's
                # keep-alive: closing now after all, when draining, is allowed). It sent
                # ``reply.sent`` bytes; a full socket buffer leaves the rest to us.
                if reply.sent < len(reply.data):
                    await self._send_all(sock, memoryview(reply.data)[reply.sent:], state)
                else:
                    done = reply.sent_at
                sent = 0 if head_only else len(response.body)
            elif response.stream is None:
                await self._send_all(sock, self._wire.encode(response, keep_alive, head_only),
                                     state)
                sent = 0 if head_only else len(response.body)
            else:
                sent = await self._send_stream(sock, state, response, keep_alive, head_only)
            self.app.answered(request, peer, response, received, sent,
                              (done or clock()) - received)
            if not keep_alive:
                return
            if pause:
                state.idle = True  # a drain may close it meanwhile
                try:
                    await trio.sleep(_REFUSAL_PAUSE)
                finally:
                    state.idle = False
            if rest or conn.pending:
                # Pipelined: the next request is already here, answered from the buffer;
                # every _YIELD_EVERY steps (answers, or receives that found bytes waiting)
                # without a yield take a checkpoint, so that it cannot starve the others.
                streak += 1
                if streak >= _YIELD_EVERY:
                    streak = 0
                    await checkpoint()
            else:
                # A client that waits for each answer has not sent its next request yet: a
                # receive now finds nothing and costs a failed recv, an epoll registration
                # and a wake-up. Yield first: once the other ready connections have had
                # their turn, the next request is usually in and the receive takes it at
                # once (the bare server's pattern; it halved the epoll work per request).
                streak = 0
                await checkpoint()
            # A partial pipelined request already in gets header_timeout from now (its
            # first byte came while we were answering); otherwise the idle timeout runs.
            state.deadline = self._deadline(limits.header_timeout if conn.mid_request
                                            else limits.idle_timeout)

    async def _receive(self, sock: socket.socket, size: int) -> bytes:
        while True:
            await wait_readable(sock)
            try:
                return sock.recv(size)
            except BlockingIOError:
                pass

    def _failed(self) -> Response:
        """A bug of ours (called in an ``except``): answer 500 (clients retry), keep
        serving."""
        self.stats.internal_errors += 1
        traceback.print_exc(file=sys.stderr)
        return error(500, "Internal error")

    async def _respond_watching(self, sock: socket.socket, state: _Conn, request: Request,
                                peer: str, reply: Reply | None) -> Response:
        """Answer a request that may park; if the client hangs up meanwhile, the hang-up
        monitor cancels the connection's scope, which ends the request (releasing its
        per-VM watcher slot at once, not at its timeout) and the connection. The
        connection's own scope is used, rather than one more per request, because a
        hang-up ends the connection anyway."""
        fd = sock.fileno()
        self._hangups.watch(fd, state, reply)
        try:
            if reply is not None:
                assert self._respond_with_reply is not None
                return await self._respond_with_reply(request, peer, reply)
            return await self.app.respond(request, peer)
        except CloseConnection:
            raise
        except Exception:
            return self._failed()
        finally:
            self._hangups.forget(fd)

    async def _send_all(self, sock: socket.socket, data: bytes | memoryview,
                        state: _Conn) -> None:
        # Usually one non-blocking send that takes everything, with no yield: the
        # connection loop's fairness rule (a receive that blocks, or a checkpoint every
        # _YIELD_EVERY steps) already bounds how long one connection runs without yielding.
        # Only a full socket buffer makes it wait for room, for send_timeout at most: a
        # client that does not read its answers does not keep its connection for ever.
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        saved = state.deadline
        state.sending = True
        state.deadline = self._deadline(self.limits.send_timeout)
        while view:
            await wait_writable(sock)
            try:
                view = view[sock.send(view):]
            except BlockingIOError:
                pass
        state.sending = False  # left set when cancelled: the sweeper's timeout was ours
        state.deadline = saved

    async def _send_stream(self, sock: socket.socket, state: _Conn, response: Response,
                           keep_alive: bool, head_only: bool) -> int:
        """A streamed answer (admin extensions) with chunked encoding; body bytes sent.

        The hang-up monitor watches the socket meanwhile: a stream may compute for long
        between chunks (a search that finds little), and a client that left ends it."""
        assert response.stream is not None
        await self._send_all(sock, encode_head(response, keep_alive=keep_alive,
                                               head_only=True, chunked=True), state)
        sent = 0
        if not head_only:
            fd = sock.fileno()
            self._hangups.watch(fd, state)
            try:
                async for chunk in response.stream:
                    if chunk:
                        sent += len(chunk)
                        await self._send_all(sock, encode_chunk(chunk), state)
            finally:
                self._hangups.forget(fd)
                aclose = getattr(response.stream, "aclose", None)
                if aclose is not None:
                    with trio.CancelScope(shield=True):
                        await aclose()
            await self._send_all(sock, LAST_CHUNK, state)
        return sent
