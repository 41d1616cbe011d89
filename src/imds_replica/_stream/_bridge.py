"""The one module that imports nats-py: a NATS connection on its own asyncio loop, in its
own thread, driven from trio.

Why a thread: nats-py is asyncio-only, and running asyncio inside trio (trio-asyncio) rests
on the loop-policy system CPython is removing. So every nats-py object is created and used
inside one private asyncio loop running in a daemon thread, and trio talks to it through
two one-way doors:

- trio → asyncio: ``asyncio.run_coroutine_threadsafe``; when the trio caller is cancelled,
  the concurrent future is cancelled, which cancels the asyncio task.
- asyncio → trio: the future's done-callback calls ``TrioToken.run_sync_soon(event.set)``;
  it never raises into trio (a finished trio run is ignored), and it never blocks the
  asyncio loop (``trio.from_thread.run_sync`` would stall its pings).

Every nats-py exception is mapped here to ``TransportError`` / ``NotFound`` (``_transport``);
nothing else sees one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import json
import logging
import math
import ssl
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import trio
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    StorageType,
    StreamConfig,
)

from ._cursor import ConsumerState, Delivery, StreamState
from ._transport import ConnectOptions, Fetched, NotFound, Published, TransportError

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Subjects per batched direct get.
MULTI_LAST = 256
#: Seconds the bridge waits for nats-py to close before abandoning its thread.
CLOSE_TIMEOUT = 2.0


class _Loop:
    """An asyncio event loop running forever in a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        #: Clients to close (if still open) before the loop stops: their sockets must not be
        #: left to the garbage collector.
        self.clients: list[NatsClient] = []
        self._closing = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            for nc in self.clients:
                if not nc.is_closed:
                    try:
                        self.loop.run_until_complete(asyncio.wait_for(nc.close(), CLOSE_TIMEOUT))
                    except Exception:  # closing a broken client: nothing more to do
                        pass
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            if tasks:
                self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            # Let transports nats-py closed (now or while reconnecting) finish closing while
            # their loop still runs; collected after it closed, they warn.
            self.loop.run_until_complete(asyncio.sleep(0.1))
            gc.collect()
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` on the loop; cancelling the caller cancels it there."""
        if self._closing:
            raise TransportError("the NATS connection is closed")
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: concurrent.futures.Future[tuple[bool, Any]]) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:  # trio is gone; nobody waits any more
                pass

        future: concurrent.futures.Future[tuple[bool, Any]] = (
            asyncio.run_coroutine_threadsafe(_call(fn, args), self.loop))
        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        try:
            ok, value = future.result()
        except concurrent.futures.CancelledError:
            raise TransportError("the NATS call was cancelled by its loop") from None
        if not ok:
            raise value
        result: T = value
        return result

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            await trio.to_thread.run_sync(self._thread.join, abandon_on_cancel=True)


async def _call(fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
                ) -> tuple[bool, Any]:
    """Runs on the asyncio loop: maps nats-py's exceptions at the edge.

    Returns ``(True, value)`` or ``(False, exception)`` rather than raising, so no task
    ever ends with an exception nobody retrieves (when trio has given up waiting)."""
    try:
        return True, await fn(*args)
    except nats.js.errors.NotFoundError as exc:
        return False, NotFound(_describe(exc), code=exc.err_code)
    except nats.js.errors.APIError as exc:
        return False, TransportError(_describe(exc), code=exc.err_code)
    except (TimeoutError, nats.errors.Error, OSError, ssl.SSLError) as exc:
        return False, TransportError(f"{type(exc).__name__}: {exc}")
    except TransportError as exc:
        return False, exc


def _describe(exc: nats.js.errors.APIError) -> str:
    return f"JetStream: {exc.description or type(exc).__name__} (code {exc.err_code})"


#: Errors that say a connection broke but not why it was refused. Under load the kernel may
#: answer nats-server's close with a reset that discards its "-ERR 'Authorization
#: Violation'" before the client has read it, so the next attempt's reset must not hide the
#: refusal an earlier attempt saw.
_UNTELLING = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, TimeoutError,
              nats.errors.UnexpectedEOF, nats.errors.ConnectionClosedError)


def _note_error(errors: list[Exception], exc: Exception) -> None:
    """Keep ``[last error]``, or ``[the last telling error, last error]`` when the last
    one is not telling (a reset after a refusal)."""
    if isinstance(exc, _UNTELLING) and errors and not isinstance(errors[0], _UNTELLING):
        errors[:] = [errors[0], exc]
    else:
        errors[:] = [exc]


def _why(errors: list[Exception]) -> str:
    if not errors:
        return ""
    why = f": {type(errors[0]).__name__}: {errors[0]}"
    if len(errors) > 1:
        why += f" (then {type(errors[-1]).__name__}: {errors[-1]})"
    return why


def _tls(options: ConnectOptions) -> ssl.SSLContext | None:
    if options.tls_ca is None:
        return None
    return ssl.create_default_context(cafile=str(options.tls_ca))


async def _connect(options: ConnectOptions, loop: _Loop,
                   errors: list[Exception] | None = None) -> NatsClient:
    async def on_error(exc: Exception) -> None:
        logger.debug("nats %s: %s", options.name, exc)
        if errors is not None:  # they say why a connection is not coming
            _note_error(errors, exc)

    async def on_disconnect() -> None:
        logger.info("nats %s: disconnected", options.name)

    kwargs: dict[str, Any] = {}
    if options.user is not None:
        kwargs.update(user=options.user, password=options.password)
    if options.credentials is not None:
        kwargs["user_credentials"] = str(options.credentials)
    if options.inbox_prefix is not None:
        kwargs["inbox_prefix"] = options.inbox_prefix
    tls = _tls(options)
    if tls is not None:
        kwargs["tls"] = tls
    nc = NatsClient()
    loop.clients.append(nc)
    # Seconds as floats: nats-py annotates them int but uses them as asyncio timeouts.
    kwargs.update(reconnect_time_wait=options.reconnect_wait,
                  connect_timeout=options.connect_timeout, ping_interval=options.ping_interval)
    await nc.connect(
        servers=list(options.servers), name=options.name, allow_reconnect=True,
        max_reconnect_attempts=-1, max_outstanding_pings=2, error_cb=on_error,
        disconnected_cb=on_disconnect, **kwargs)
    return nc


def _published(msg: Any) -> Published:
    """A publish acknowledgement (or refusal) as JetStream sends it."""
    if msg.headers and msg.headers.get("Status") == "503":
        return Published(None, error="no stream captures the subject (503 no responders)")
    try:
        answer = json.loads(msg.data)
    except ValueError:
        return Published(None, error="unreadable acknowledgement")
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict):
        code = error.get("err_code")
        return Published(None, error=f"JetStream: {error.get('description')} (code {code})",
                         code=code if isinstance(code, int) else None)
    seq = answer.get("seq") if isinstance(answer, dict) else None
    if not isinstance(seq, int):
        return Published(None, error="acknowledgement without a sequence")
    return Published(seq, duplicate=bool(answer.get("duplicate")))


def _delivery(msg: Any) -> Delivery:
    """A delivered message with the sequences of its reply subject.

    Parsed here rather than by ``msg.metadata``, which also builds a datetime and two
    dataclasses per message (a fifth of the host's ingest CPU): ``$JS.ACK.<stream>.
    <consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`` (9 tokens), or
    the 12-token form with domain and account hash in front."""
    tokens = (msg.reply or "").split(".")
    try:
        if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
            return Delivery(msg.subject, bytes(msg.data), int(tokens[5]), int(tokens[6]),
                            int(tokens[8]))
        if len(tokens) >= 11 and tokens[0] == "$JS" and tokens[1] == "ACK":
            return Delivery(msg.subject, bytes(msg.data), int(tokens[7]), int(tokens[8]),
                            int(tokens[10]))
    except ValueError:
        pass
    raise TransportError(f"a delivery without JetStream metadata on {msg.subject!r}")


def _state(info: Any) -> StreamState:
    created = info.created.isoformat() if info.created is not None else ""
    return StreamState(info.config.name, created, info.state.first_seq, info.state.last_seq,
                       info.state.messages)


class Connection:
    """A NATS connection usable from trio. Open with ``await Connection.open(options)``;
    close with ``await conn.aclose()``. All methods raise ``TransportError`` (or
    ``NotFound``) for anything that went wrong on the way or at the server."""

    def __init__(self, loop: _Loop, nc: NatsClient, *, publish_window: int) -> None:
        self._loop = loop
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream(publish_async_max_pending=publish_window)
        self._psubs: dict[str, Any] = {}
        self._ack_prefix: str | None = None
        self._ack_counter = 0
        self._acks: dict[str, asyncio.Future[Published]] = {}

    @classmethod
    async def open(cls, options: ConnectOptions, *, publish_window: int = 4000,
                   give_up_after: float | None = None) -> Connection:
        """Connect; with ``give_up_after``, give up after that many seconds with a
        ``TransportError`` naming the last telling error (nats-py itself retries a first connection
        for ever when reconnecting is on: a wrong password or CA would just hang)."""
        loop = _Loop(f"nats-{options.name or 'client'}")
        errors: list[Exception] = []
        try:
            limit = math.inf if give_up_after is None else give_up_after
            with trio.move_on_after(limit) as scope:
                nc = await loop.run(_connect, options, loop, errors)
            if scope.cancelled_caught:
                raise TransportError(f"no connection to NATS within {limit:g}s"
                                     f"{_why(errors)}")
        except BaseException:
            await loop.close()
            raise
        return cls(loop, nc, publish_window=publish_window)

    async def aclose(self) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            try:
                await self._loop.run(self._nc.close)
            except TransportError:
                pass
        await self._loop.close()

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    # -- streams ---------------------------------------------------------------------------
    async def stream_state(self, stream: str) -> StreamState:
        async def go() -> StreamState:
            return _state(await self._js.stream_info(stream))
        return await self._loop.run(go)

    async def stream_info(self, stream: str) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            info = await self._js.stream_info(stream)
            out: dict[str, Any] = info.as_dict()
            return out
        return await self._loop.run(go)

    async def add_stream(self, *, name: str, subjects: Sequence[str], max_consumers: int,
                         replicas: int, storage_file: bool = True) -> dict[str, Any]:
        config = StreamConfig(
            name=name, subjects=list(subjects), max_msgs_per_subject=1, max_age=0,
            discard=DiscardPolicy.NEW, max_consumers=max_consumers, num_replicas=replicas,
            storage=StorageType.FILE if storage_file else StorageType.MEMORY,
            allow_direct=True, duplicate_window=120.0)

        async def go() -> dict[str, Any]:
            out: dict[str, Any] = (await self._js.add_stream(config)).as_dict()
            return out
        return await self._loop.run(go)

    async def delete_stream(self, stream: str) -> None:
        async def go() -> None:
            await self._js.delete_stream(stream)
        await self._loop.run(go)

    async def purge_stream(self, stream: str) -> None:
        async def go() -> None:
            await self._js.purge_stream(stream)
        await self._loop.run(go)

    # -- the host's consumers -------------------------------------------------------------
    async def recreate_consumer(self, *, stream: str, name: str, filter: str,
                                start_seq: int, inactive_threshold: float,
                                max_buffered: int) -> int:
        """Replace consumer ``name`` by a fresh one of the single subject ``filter``,
        delivering from ``start_seq`` on; returns its pending count at creation.

        One filter, so that nats-py creates it on ``$JS.API.CONSUMER.CREATE.<stream>.<name>
        .<filter>``, a subject naming the filter, which a host's NATS permissions restrict to
        its own subjects (the server refuses a body whose filter differs from the subject's).
        """
        config = ConsumerConfig(
            name=name, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start_seq, ack_policy=AckPolicy.NONE,
            filter_subject=filter, mem_storage=True, num_replicas=1,
            inactive_threshold=inactive_threshold, max_waiting=1)

        async def go() -> int:
            old = self._psubs.pop(name, None)
            if old is not None:
                try:
                    await old.unsubscribe()
                except (nats.errors.Error, ValueError):
                    pass
            try:
                await self._js.delete_consumer(stream, name)
            except nats.js.errors.NotFoundError:
                pass
            info = await self._js.add_consumer(stream, config)
            self._psubs[name] = await self._js.pull_subscribe_bind(
                consumer=name, stream=stream, pending_msgs_limit=max_buffered,
                pending_bytes_limit=64 * 1024 * 1024)
            return int(info.num_pending or 0)
        return await self._loop.run(go)

    async def consumer_state(self, stream: str, name: str) -> ConsumerState:
        """Consumer ``name``'s deliveries so far (its consumer sequence) and pending count."""
        async def go() -> ConsumerState:
            info = await self._js.consumer_info(stream, name)
            delivered = int(info.delivered.consumer_seq) if info.delivered else 0
            return ConsumerState(delivered, int(info.num_pending or 0))
        return await self._loop.run(go)

    async def delete_consumer(self, stream: str, name: str) -> None:
        async def go() -> None:
            await self._js.delete_consumer(stream, name)
        await self._loop.run(go)

    async def fetch(self, name: str, batch: int, *, expires: float,
                    heartbeat: float) -> Fetched:
        """One pull of at most ``batch`` messages from consumer ``name`` (which this
        connection created); the caller keeps at most one outstanding per consumer."""
        async def go() -> Fetched:
            psub = self._psubs.get(name)
            if psub is None:
                raise TransportError(f"no consumer {name} to fetch from")
            try:
                msgs = await psub.fetch(batch, timeout=expires, heartbeat=heartbeat)
            except nats.js.errors.FetchTimeoutError:
                return Fetched(idle=True)  # heartbeats came, no message: alive and idle
            except nats.js.errors.APIError as exc:
                # nats-py's lingering pull (sent only after its no-wait probe found nothing
                # pending) asks for the time left; on a slow machine that can fall below
                # twice the heartbeat, which the server refuses: it answered, nothing was
                # pending, so this is an idle fetch, not a failure.
                if exc.code == 400 and "heartbeat" in (exc.description or ""):
                    return Fetched(idle=True)
                raise
            except nats.errors.TimeoutError:
                return Fetched()  # not even a heartbeat
            except TimeoutError:
                return Fetched()
            return Fetched(tuple(_delivery(msg) for msg in msgs))
        return await self._loop.run(go)

    # -- publishing ------------------------------------------------------------------------
    async def last_messages(self, stream: str, subjects: Sequence[str]
                            ) -> list[tuple[int, bytes] | None]:
        """The current message (sequence, payload) of each subject, None where none.

        One batched direct get (``multi_last``, nats-server >= 2.11; the stream needs
        ``allow_direct``) per ``MULTI_LAST`` subjects, the chunks in flight together: a
        round trip per window instead of one per subject. A replica may answer a direct
        get slightly behind the leader; the publisher's compare-and-set catches that.
        """
        async def chunk(names: Sequence[str]) -> dict[str, tuple[int, bytes]]:
            inbox = self._nc.new_inbox()
            sub = await self._nc.subscribe(inbox, pending_msgs_limit=2 * len(names) + 10)
            found: dict[str, tuple[int, bytes]] = {}
            try:
                request = json.dumps({"multi_last": list(names), "batch": len(names)})
                await self._nc.publish(f"$JS.API.DIRECT.GET.{stream}", request.encode(),
                                       reply=inbox)
                while True:
                    msg = await sub.next_msg(timeout=self._js._timeout)
                    headers = msg.headers or {}
                    status = headers.get("Status")
                    if status is not None:
                        if status in ("204", "404"):
                            return found  # end of batch / nothing found
                        raise TransportError(f"direct get on {stream}: status {status} "
                                             f"{headers.get('Description', '')}".strip())
                    found[headers["Nats-Subject"]] = (int(headers["Nats-Sequence"]),
                                                      bytes(msg.data))
            finally:
                await sub.unsubscribe()

        async def go() -> list[tuple[int, bytes] | None]:
            if not subjects:
                return []
            parts = [subjects[i:i + MULTI_LAST] for i in range(0, len(subjects), MULTI_LAST)]
            merged: dict[str, tuple[int, bytes]] = {}
            for found in await asyncio.gather(*(chunk(p) for p in parts)):
                merged.update(found)
            return [merged.get(name) for name in subjects]
        return await self._loop.run(go)

    async def publish_many(self, items: Sequence[tuple[str, bytes, dict[str, str] | None]],
                           *, ack_wait: float = 10.0) -> list[Published]:
        """Pipelined publishes, each answered with its own fate (its sequence or its error).

        Not nats-py's ``publish_async``: in 2.16 a JetStream error answer (the very
        compare-and-set refusal a publisher relies on) leaves its future pending forever, as
        the reply handler raises instead of setting the exception. This is the same
        pipelining over a wildcard reply inbox, with the answers parsed here.
        """
        async def go() -> list[Published]:
            if not items:
                return []
            prefix = await self._ack_inbox()
            loop = asyncio.get_running_loop()
            futures = []
            for subject, payload, headers in items:
                self._ack_counter += 1
                reply = f"{prefix}.{self._ack_counter}"
                future: asyncio.Future[Published] = loop.create_future()
                self._acks[reply] = future
                futures.append((reply, future))
                await self._nc.publish(subject, payload, reply=reply, headers=headers)
            await asyncio.wait([f for _, f in futures], timeout=ack_wait)
            out = []
            for reply, future in futures:
                self._acks.pop(reply, None)
                if future.done():
                    out.append(future.result())
                else:
                    future.cancel()
                    out.append(Published(None, error=f"no acknowledgement within {ack_wait}s"))
            return out
        return await self._loop.run(go)

    async def _ack_inbox(self) -> str:
        if self._ack_prefix is not None:
            return self._ack_prefix
        prefix = self._nc.new_inbox()

        async def on_ack(msg: Any) -> None:
            future = self._acks.pop(msg.subject, None)
            if future is None or future.done():
                return
            future.set_result(_published(msg))

        await self._nc.subscribe(f"{prefix}.*", cb=on_ack, pending_msgs_limit=1_000_000,
                                 pending_bytes_limit=256 * 1024 * 1024)
        self._ack_prefix = prefix
        return prefix

    async def publish(self, subject: str, payload: bytes,
                      headers: dict[str, str] | None = None) -> Published:
        """One publish, waiting for its acknowledgement."""
        return (await self.publish_many([(subject, payload, headers)]))[0]
