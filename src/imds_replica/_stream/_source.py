"""``StreamSource``: a host's replica fed from its cluster's NATS JetStream stream.

The trio shell around the ``Follower`` (``_cursor``): it reads the stream's state, makes
the disposable consumer the follower asks for, keeps exactly one fetch outstanding, and
submits each fetch's events as one batch with the new cursor, so the next fetch is asked
for only once the previous batch is durable. Contact is reported on every batch and every
heartbeat-only fetch; a fetch nobody answers is a failure and recreates the consumer.

The connection (``_bridge``: nats-py on its own asyncio loop and thread) is opened when
``run`` starts and reopened with jittered exponential backoff whenever it fails or wedges
(a call that outlives its deadline); the replica keeps serving what it has meanwhile.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from .._errors import ConfigError, ValidationError
from .._event import Event
from .._liveliness import LivelinessPolicy
from .._source import SourceSink
from ._bridge import Connection
from ._cursor import LANES, Action, Cursor, Follower, Lane, Phase, Step, worth_submitting
from ._transport import ConnectOptions, Fetched, TransportError
from ._wire import (
    all_consumer_name,
    check_cluster,
    check_host,
    check_source,
    consumer_name,
    host_filters,
)
from ._wire import stream_name as _stream_name

logger = logging.getLogger(__name__)


@attrs.frozen
class StreamSourceStatistics:
    connected: bool
    phase: str  # the follower's: detached, following, resyncing
    cursor_seq: int | None  # highest stream sequence applied (durable), either lane
    pending: int | None  # messages the consumer still holds for this host (the lag)
    batches: int
    events: int  # events submitted
    refused: int  # messages refused (malformed, or not matching their subject)
    resyncs: int
    recreations: int  # consumers recreated (gaps, silence, errors, stream changes)
    gaps: int
    connects: int
    failures: int
    consecutive_failures: int
    last_error: str | None
    host_seq: int | None = None  # the host lane's cursor (imds.<cluster>.<host>.<source>.*)
    all_seq: int | None = None  # the _all lane's cursor
    delivered: int = 0  # messages the consumers delivered (redeliveries included)
    tombstoned: int = 0  # registers tombstoned at the end of a resync (gone from the stream)


class StreamSource:
    """Reads ``imds.<cluster>.<host>.<name>.*`` and ``imds.<cluster>._all.<name>.*``.

    ``servers`` (or a full ``options``) say where NATS is and how to authenticate. ``batch``
    bounds one fetch (and so one submit); ``fetch_timeout`` a fetch's wait for messages;
    ``heartbeat`` the server's idle heartbeats within it (``2 * heartbeat`` must not exceed
    ``fetch_timeout``); ``check_interval`` how often the stream's state is re-read while
    idle (to notice a purge); ``backoff_max`` caps the wait between reconnections.
    """

    def __init__(self, name: str, *, cluster: str, host: str,
                 servers: Sequence[str] | str | None = None,
                 options: ConnectOptions | None = None,
                 policy: LivelinessPolicy | None = None, batch: int = 256,
                 fetch_timeout: float = 5.0, heartbeat: float = 1.0,
                 check_interval: float = 30.0, backoff_max: float = 30.0,
                 call_timeout: float = 10.0, inactive_threshold: float = 300.0,
                 prefetch: bool = True) -> None:
        check_source(name)
        check_cluster(cluster)
        check_host(host)
        if options is None:
            if servers is None:
                raise ConfigError("give servers (NATS URLs) or options", key="servers")
            options = ConnectOptions(servers=tuple([servers] if isinstance(servers, str)
                                                   else servers), name=f"imds-{host}-{name}",
                                     inbox_prefix=f"_INBOX_{host}")
        if not 1 <= batch <= 10_000:
            raise ConfigError(f"{batch!r} must be in 1..10000", key="batch")
        if not (heartbeat > 0 and fetch_timeout >= 2 * heartbeat):
            raise ConfigError("need heartbeat > 0 and fetch-timeout >= 2 * heartbeat",
                              key="heartbeat")
        self.name = name
        self.cluster = cluster
        self.host = host
        self.options = options
        self.stream = _stream_name(cluster)
        #: One single-filter consumer per lane (see ``_cursor``: why not one with two).
        self.consumers = {Lane.HOST: consumer_name(host, name),
                          Lane.ALL: all_consumer_name(host, name)}
        self.filters = dict(zip(LANES, host_filters(cluster, host, name), strict=True))
        self.policy = policy or LivelinessPolicy(
            interval=fetch_timeout, stale_after=max(60.0, 6 * fetch_timeout),
            expired_after=3600.0)
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.heartbeat = heartbeat
        self.check_interval = check_interval
        self.backoff_max = backoff_max
        self.call_timeout = call_timeout
        self.inactive_threshold = inactive_threshold
        #: False: a lane's next fetch only once its batch is durable (strict backpressure,
        #: one batch of a lane in memory); True: one fetch overlaps the fsync (two).
        self.prefetch = prefetch
        self._follower: Follower | None = None
        self._connected = False
        self._applied: Cursor | None = None
        self._batches = self._events = self._connects = 0
        self._failures = self._consecutive = 0
        self._last_error: str | None = None
        self._progress = trio.Event()

    # -- the loop --------------------------------------------------------------------------
    async def run(self, sink: SourceSink, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        cursor = self._applied = Cursor.from_wire(sink.cursor)

        def held() -> Iterable[Event]:
            return [e for e in sink.view.registers() if e.source == self.name]

        follower = self._follower = Follower(
            stream=self.stream, cluster=self.cluster, host=self.host, source=self.name,
            cursor=cursor, held=held)
        # Started before connecting: an unreachable NATS must not hold up the replica,
        # which serves what it recovered from its log meanwhile.
        task_status.started()
        while True:
            try:
                conn = await Connection.open(self.options,
                                             give_up_after=self.options.first_connect_bound)
            except TransportError as exc:
                await self._failed(sink, follower, exc)
                continue
            self._connects += 1
            self._connected = True
            try:
                await self._follow(conn, follower, sink)
            except (TransportError, trio.TooSlowError) as exc:
                error: BaseException | None = exc
            else:  # pragma: no cover - _follow returns only by raising
                error = None
            finally:
                self._connected = False
                with trio.CancelScope(shield=True):
                    await conn.aclose()
            if error is not None:
                await self._failed(sink, follower, error)

    async def _failed(self, sink: SourceSink, follower: Follower, exc: BaseException) -> None:
        error = (f"NATS call took longer than {self.call_timeout}s (client wedged)"
                 if isinstance(exc, trio.TooSlowError) else str(exc))
        self._failures += 1
        self._consecutive += 1
        self._last_error = error
        log = logger.warning if self._consecutive == 1 else logger.debug
        log("stream source %s: %s (attempt %d failed)", self.name, error, self._consecutive)
        sink.failure(error)
        follower.on_lost()
        # Full jitter: a cluster's hosts reconnecting at once must not stampede the server.
        await trio.sleep(random.uniform(0, min(self.backoff_max, 0.5 * 2 ** self._consecutive)))

    async def _follow(self, conn: Connection, follower: Follower, sink: SourceSink) -> None:
        while True:
            await self._create(conn, follower, sink)
            await self._read(conn, follower, sink)  # returns when the consumers are stale

    async def _create(self, conn: Connection, follower: Follower, sink: SourceSink) -> None:
        with trio.fail_after(self.call_timeout):
            state = await conn.stream_state(self.stream)
        step = follower.on_stream(state)
        if follower.phase is Phase.RESYNCING and self._applied is not None:
            logger.info("stream source %s: resync of %s from its start", self.name,
                        self.stream)
        for lane in LANES:
            with trio.fail_after(self.call_timeout):
                pending = await conn.recreate_consumer(
                    stream=self.stream, name=self.consumers[lane], filter=self.filters[lane],
                    start_seq=step.start[lane], inactive_threshold=self.inactive_threshold,
                    max_buffered=2 * self.batch)
            await self._apply(sink, follower.on_created(lane, pending))

    async def _read(self, conn: Connection, follower: Follower, sink: SourceSink) -> None:
        """Both lanes' fetches, one outstanding per lane, their results taken one at a time
        (so the follower and the submits stay in one task, in order), until the follower
        asks for new consumers. Errors end it by raising."""
        send, receive = trio.open_memory_channel[tuple[Lane, Fetched | BaseException]](
            len(LANES))
        checked = dict.fromkeys(LANES, trio.current_time())
        error: BaseException | None = None
        async with trio.open_nursery() as nursery:
            for lane in LANES:
                nursery.start_soon(self._pull, conn, lane, send)
            try:
                while True:
                    lane, fetched = await receive.receive()
                    if isinstance(fetched, BaseException):
                        raise fetched
                    prefetched: list[Lane] = []

                    def prefetch(lane: Lane = lane, done: list[Lane] = prefetched) -> None:
                        if self.prefetch:
                            done.append(lane)
                            nursery.start_soon(self._pull, conn, lane, send)

                    if not await self._take(conn, follower, sink, lane, fetched, checked,
                                            prefetch):
                        break
                    if not prefetched:
                        nursery.start_soon(self._pull, conn, lane, send)
            except (TransportError, trio.TooSlowError) as exc:
                error = exc
            nursery.cancel_scope.cancel()  # the other lane's fetch, now of no use
        if error is not None:
            raise error

    async def _pull(self, conn: Connection, lane: Lane,
                    send: trio.MemorySendChannel[tuple[Lane, Fetched | BaseException]]) -> None:
        result: Fetched | BaseException
        try:
            with trio.fail_after(self.fetch_timeout + self.call_timeout):
                result = await conn.fetch(self.consumers[lane], self.batch,
                                          expires=self.fetch_timeout, heartbeat=self.heartbeat)
        except (TransportError, trio.TooSlowError) as exc:
            result = exc
        send.send_nowait((lane, result))  # room for one result per lane: never blocks

    async def _take(self, conn: Connection, follower: Follower, sink: SourceSink, lane: Lane,
                    fetched: Fetched, checked: dict[Lane, float],
                    prefetch: Callable[[], None]) -> bool:
        """One lane's fetch: apply it; False when the consumers must be recreated.

        A batch that leaves the consumer as it is lets the lane's next fetch go out
        (``prefetch``) while this one is being made durable: one prefetch, so at most two
        batches of a lane are ever in memory, and the follower still sees them in order."""
        if fetched.deliveries:
            step = follower.on_batch(lane, fetched.deliveries)
            if step.action is not Action.RECREATE:
                prefetch()
        elif fetched.idle:
            step = follower.on_idle(lane)
        else:
            step = follower.on_silence()
            sink.failure(f"no heartbeat from consumer {self.consumers[lane]} within "
                         f"{self.fetch_timeout}s: recreating it")
        await self._apply(sink, step)
        if fetched.deliveries or fetched.idle:
            if self._consecutive:
                logger.info("stream source %s: NATS answers again", self.name)
            self._consecutive = 0
            sink.contact()
        if step.action is Action.RECREATE:
            return False
        if fetched.idle and (follower.wants_check(lane)
                             or trio.current_time() - checked[lane] > self.check_interval):
            # Stream first, then the consumer: what the consumer then says it delivered
            # covers everything the stream held when it was read.
            with trio.fail_after(self.call_timeout):
                state = await conn.stream_state(self.stream)
                consumer = await conn.consumer_state(self.stream, self.consumers[lane])
            checked[lane] = trio.current_time()
            step = follower.on_check(lane, state, consumer)
            await self._apply(sink, step)
            if step.action is Action.RECREATE:
                return False
        return True

    async def _apply(self, sink: SourceSink, step: Step) -> None:
        for refusal in step.refused:
            logger.warning("stream source %s: refused message %d on %s: %s", self.name,
                           refusal.stream_seq, refusal.subject, refusal.reason)
        if step.cursor is None or (not step.events and step.cursor == self._applied):
            return
        events = worth_submitting(step.events, sink.view.get)
        while True:
            try:
                await sink.submit(events, step.cursor.to_wire())
                break
            except ValidationError as exc:
                # One event the replica refuses (say, larger than its value limit) is
                # refused alone, like a malformed message; the rest still applies.
                if exc.index is None or not 0 <= exc.index < len(events):
                    raise
                bad = events.pop(exc.index)
                assert self._follower is not None
                self._follower.refused += 1
                logger.warning("stream source %s: refused message %s: %s", self.name,
                               bad.seq, exc.message)
        self._batches += 1
        self._events += len(events)
        self._applied = step.cursor
        self._progress.set()
        self._progress = trio.Event()
        if step.tombstoned:
            logger.info("stream source %s: resync done, %d register(s) gone from the stream "
                        "tombstoned", self.name, step.tombstoned)

    async def wait_applied(self, seq: int) -> None:
        """Return once a lane is durable up to stream sequence ``seq`` (tests, tools): the
        message at ``seq``, if it is one of this source's, is applied, and so is every
        earlier one of its lane."""
        while self._applied is None or self._applied.seq < seq:
            await self._progress.wait()

    def statistics(self) -> StreamSourceStatistics:
        f = self._follower
        return StreamSourceStatistics(
            connected=self._connected, phase=f.phase.value if f else "detached",
            cursor_seq=self._applied.seq if self._applied else None,
            host_seq=self._applied.host_seq if self._applied else None,
            all_seq=self._applied.all_seq if self._applied else None,
            pending=f.pending if f else None,
            batches=self._batches, events=self._events, refused=f.refused if f else 0,
            resyncs=f.resyncs if f else 0, recreations=f.recreations if f else 0,
            gaps=f.gaps if f else 0, connects=self._connects, failures=self._failures,
            consecutive_failures=self._consecutive, last_error=self._last_error,
            delivered=f.delivered if f else 0, tombstoned=f.tombstoned if f else 0)


def stream_source_from_settings(name: str, settings: dict[str, Any],
                                policy: LivelinessPolicy | None) -> StreamSource:
    """A ``StreamSource`` from a server config's ``[[source]]`` table (already type-checked)."""
    servers = settings["servers"]
    options = ConnectOptions(
        servers=tuple(servers), name=f"imds-{settings['host']}-{name}",
        user=settings.get("user"), password=settings.get("password"),
        credentials=Path(settings["credentials"]) if "credentials" in settings else None,
        tls_ca=Path(settings["tls-ca"]) if "tls-ca" in settings else None,
        inbox_prefix=f"_INBOX_{settings['host']}")
    return StreamSource(name, cluster=settings["cluster"], host=settings["host"],
                        options=options, policy=policy, batch=settings.get("batch", 256),
                        prefetch=settings.get("prefetch", True))
