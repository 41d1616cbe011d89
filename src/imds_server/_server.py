"""``Server``: the listeners, the replica, and what the pure handlers ask of I/O.

Start order is what makes restarts invisible: listeners first (inherited from the service
manager, or bound); while the log replays a request waits up to ``startup-hold`` seconds
and then gets 410 + Retry-After; once the replica is attached answers are real.
``shutdown()`` (SIGTERM) drains: no more accepts, keep-alive connections close between
requests, in-flight requests finish, parked watchers are answered with the current value,
then ``run`` returns (after ``shutdown-grace`` at most).
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from imds_replica import (
    EventLog,
    ImdsError,
    LivelinessPolicy,
    Replica,
    open_replica,
)

from . import _demo, _schedule
from ._admin import AdminApi, AdminHandler
from ._api import ApiPolicy, VmApi
from ._config import ServerConfig
from ._connection import App, ConnectionLimits, Listener
from ._guest import admin_routes, answer_issue, attach_guest_surface
from ._http import HttpLimits
from ._listen import ADMIN_NAME, Address, bind, check_separate, inherited, set_ttl
from ._observe import AccessRecord, NullObserver, RequestObserver
from ._refusals import AGGREGATED, RefusalDigest
from ._request import Offload, Park, Request, Response, Submit, error, failure
from ._schedule import APPROVAL_SOURCE
from ._sources import build_source
from ._storage import open_log
from ._watch import Reply, Watches
from .identity._endpoint import IdentityPolicy, Issue

#: Liveliness policies of the sources this server itself writes or seeds.
POLICIES: Mapping[str, LivelinessPolicy] = {
    "guest": LivelinessPolicy.pushed(), "fabric": LivelinessPolicy.pushed(),
    "hostnet": LivelinessPolicy.pushed(),
}


@attrs.frozen
class ServerStatistics:
    """Gauges and counters for telemetry (``Server.statistics()``)."""

    ready: bool
    draining: bool
    connections_open: int
    connections_accepted: int
    connections_refused: int
    admin_connections_open: int
    requests: int
    parked_watchers: int
    watchers_refused: int
    rate_limited: int
    unknown_callers: int
    protocol_errors: int
    timeouts: int
    internal_errors: int
    cache_hits: int
    cache_misses: int
    cache_entries: int
    cache_invalidations: int
    #: Connections closed at accept because the caller is unknown (over the shared
    #: budget, or throttled); included in ``connections_refused``.
    unknown_refused: int = 0
    unknown_connections_open: int = 0
    send_timeouts: int = 0  # closed: the client did not read its answer in time
    closed_after_refusals: int = 0  # closed: kept sending after its 429s
    #: Of ``unknown_refused``, those refused by the per-address accept throttle (the rest:
    #: the shared unknown budget was full).
    unknown_refused_throttled: int = 0
    watchers_disconnected: int = 0  # parked requests cancelled: the client hung up
    #: ``/metadata/identity/...``: requests, token answers (of which from the cache),
    #: 500s for want of a token (issuer failed, none cached), 4xx by refusal reason.
    identity_requests: int = 0
    identity_tokens: int = 0
    identity_tokens_cached: int = 0
    identity_issuer_errors: int = 0
    identity_refused: Mapping[str, int] = attrs.field(factory=dict)
    #: The token cache over the issuer: tokens issued, failed issuer calls (a usable cached
    #: token may have been served instead: ``tokens_served_stale``), tokens cached.
    tokens_issued: int = 0
    token_issuer_failures: int = 0
    tokens_served_stale: int = 0
    token_cache_entries: int = 0


class Server:
    """One ``imds-server`` instance. ``await nursery.start(server.run)`` returns once both
    listeners accept (``vm_address``/``admin_address`` are then set)."""

    def __init__(self, config: ServerConfig, *, log: EventLog | None = None,
                 observer: RequestObserver | None = None,
                 extra_routes: Mapping[str, AdminHandler] | None = None,
                 clock: Callable[[], float] = time.time,
                 sockets: Mapping[str, list[socket.socket]] | None = None) -> None:
        self.config = config
        self.clock = clock
        self.observer: RequestObserver = observer or NullObserver()
        self._log = log
        self._sockets = sockets
        self.api = VmApi(ApiPolicy(
            rate_limit=config.rate_limit, rate_burst=config.rate_burst,
            max_watchers_per_vm=config.max_watchers_per_vm,
            max_watch_timeout=config.max_watch_timeout), started=clock(),
            identity=IdentityPolicy(rate_limit=config.identity_rate_limit,
                                    max_concurrent=config.identity_max_concurrent))
        routes = {**admin_routes(lambda: self.api), **(extra_routes or {})}
        self.admin = AdminApi(clock=clock, extra_routes=routes, status=self._health,
                              owned_sources=(APPROVAL_SOURCE,),
                              allow_owned_sources=config.admin_allow_owned_sources)
        self.replica: Replica | None = None
        self.vm_listeners: list[Listener] = []
        self.admin_listeners: list[Listener] = []
        self.draining = False
        #: Parked watchers, and the fan-out that answers them after a change.
        self.watches = Watches(self.api, clock)
        self._stop = trio.Event()
        self._ready = trio.Event()
        #: Worker threads for ``Offload`` work (attested signing); two cores is the norm.
        self.offload_limiter = trio.CapacityLimiter(2)
        #: Set when ``run`` has returned (drained, or failed).
        self.stopped = trio.Event()
        self._ids = itertools.count(1)
        self._id_prefix = f"{os.getpid():x}-{int(clock()):x}-"
        self._refusals = RefusalDigest()
        #: What counts a request without logging it (an aggregated refusal); observers
        #: without it get every record.
        self._count_only: Callable[[AccessRecord], None] | None = getattr(
            self.observer, "count", None)
        #: ``AnswerObserver.answered``, if the observer has it: answers without a record.
        self._answered: Callable[..., None] | None = getattr(self.observer, "answered", None)
        #: Nothing to tell (no telemetry): no record is built at all.
        self._silent = type(self.observer) is NullObserver

    # -- addresses and statistics ------------------------------------------------------
    @property
    def vm_address(self) -> tuple[str, int]:
        return self.vm_listeners[0].address  # type: ignore[no-any-return]

    @property
    def admin_address(self) -> tuple[str, int]:
        return self.admin_listeners[0].address  # type: ignore[no-any-return]

    def statistics(self) -> ServerStatistics:
        vm = [lst.stats for lst in self.vm_listeners]
        admin = [lst.stats for lst in self.admin_listeners]
        cache = self.api.cache
        identity = self.api.identity.stats
        tokens = self.api.identity.tokens
        cached = tokens.statistics() if tokens is not None else None
        return ServerStatistics(
            ready=self.replica is not None, draining=self.draining,
            connections_open=sum(s.open for s in vm),
            connections_accepted=sum(s.accepted for s in vm),
            connections_refused=sum(s.refused for s in vm),
            admin_connections_open=sum(lst.stats.open for lst in self.admin_listeners),
            requests=self.api.stats.requests, parked_watchers=self.api.parked,
            watchers_refused=self.api.stats.watchers_refused,
            rate_limited=self.api.stats.rate_limited,
            unknown_callers=self.api.stats.refused_callers,
            protocol_errors=sum(s.protocol_errors for s in vm),
            timeouts=sum(s.timeouts for s in vm),
            internal_errors=sum(s.internal_errors for s in vm + admin),
            cache_hits=cache.hits if cache else 0, cache_misses=cache.misses if cache else 0,
            cache_entries=len(cache) if cache else 0,
            cache_invalidations=cache.invalidations if cache else 0,
            unknown_refused=sum(s.refused_unknown for s in vm),
            unknown_connections_open=sum(s.unknown_open for s in vm),
            send_timeouts=sum(s.send_timeouts for s in vm + admin),
            closed_after_refusals=sum(s.closed_after_refusals for s in vm),
            unknown_refused_throttled=sum(s.refused_unknown_throttled for s in vm),
            watchers_disconnected=sum(s.disconnected_watchers for s in vm),
            identity_requests=identity.requests, identity_tokens=identity.tokens,
            identity_tokens_cached=identity.cached,
            identity_issuer_errors=identity.issuer_errors,
            identity_refused=dict(identity.refused),
            tokens_issued=cached.issued if cached else 0,
            token_issuer_failures=cached.failures if cached else 0,
            tokens_served_stale=cached.served_stale if cached else 0,
            token_cache_entries=cached.entries if cached else 0,
        )

    def _health(self) -> dict[str, Any]:
        health: dict[str, Any] = {
            "pid": os.getpid(), "draining": self.draining, "parked_watchers": self.api.parked,
            "uptime_seconds": round(self.clock() - self.api.started, 3)}
        log = self.replica.log.statistics() if self.replica is not None else None
        if log is not None and hasattr(log, "writable"):
            # A log that refuses writes (disk full, failed fsync) still serves every read.
            health["log"] = {"writable": log.writable, "state": log.state, "error": log.error}
            if not log.writable:
                health["status"] = "degraded"
        return health

    # -- running -----------------------------------------------------------------------
    async def wait_ready(self) -> Replica:
        """Return the replica once the log is replayed and answers are real."""
        await self._ready.wait()
        assert self.replica is not None
        return self.replica

    def shutdown(self) -> None:
        """Begin the graceful stop (idempotent; safe from a signal-handling task)."""
        self._stop.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        try:
            await self._run(task_status)
        finally:
            self.stopped.set()

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        cfg = self.config
        vm_socks, admin_socks = self._open_sockets()
        http = HttpLimits(max_request_line=cfg.max_request_line,
                          max_header_bytes=cfg.max_header_bytes,
                          max_body_bytes=cfg.max_body_bytes)
        limits = ConnectionLimits(header_timeout=cfg.header_timeout,
                                  idle_timeout=cfg.idle_timeout,
                                  max_connections=cfg.max_connections,
                                  max_connections_per_caller=cfg.max_connections_per_caller,
                                  max_unknown_connections=cfg.max_unknown_connections,
                                  unknown_rate_limit=cfg.unknown_rate_limit,
                                  unknown_rate_burst=cfg.unknown_rate_burst,
                                  send_timeout=cfg.send_timeout,
                                  refusals_before_close=cfg.refusals_before_close)
        for sock in vm_socks:
            set_ttl(sock, cfg.ip_ttl)
            self.vm_listeners.append(Listener(sock, self._vm_app(), http=http, limits=limits,
                                              ttl=cfg.ip_ttl, known=self._known))
        admin_http = attrs.evolve(http, max_body_bytes=cfg.admin_max_body_bytes)
        admin_limits = attrs.evolve(limits, max_connections_per_caller=limits.max_connections,
                                    max_unknown_connections=None, unknown_rate_limit=0.0,
                                    refusals_before_close=0,
                                    body_timeout=cfg.admin_body_timeout)
        for sock in admin_socks:
            self.admin_listeners.append(Listener(sock, self._admin_app(), http=admin_http,
                                                 limits=admin_limits))
        listeners = self.vm_listeners + self.admin_listeners
        attach_guest_surface(self.api, cfg, self.admin_listeners[0].address)
        async with trio.open_nursery() as outer:
            serving = trio.CancelScope()
            started, finished = trio.Event(), trio.Event()

            async def serve_all() -> None:
                with serving:
                    async with trio.open_nursery() as inner:
                        for listener in listeners:
                            await inner.start(listener.serve)
                        started.set()
                finished.set()

            outer.start_soon(serve_all)
            refusal_lines = trio.CancelScope()
            outer.start_soon(self._log_refusals, refusal_lines)
            fan_out = trio.CancelScope()
            outer.start_soon(self._fan_out, fan_out)
            await started.wait()
            task_status.started()
            log = self._log if self._log is not None else open_log(
                cfg.data_dir, tombstone_retention=cfg.tombstone_retention)
            sources = [build_source(spec) for spec in cfg.sources]
            self.admin.source_details = lambda: _adapter_statistics(sources)
            async with open_replica(log, sources=sources, policies=POLICIES,
                                    clock=self.clock) as replica:
                if cfg.demo:
                    await _demo.seed(replica)
                replica.view.subscribe(self._wake)
                self.api.attach(replica.view, replica.liveliness)
                self.replica = replica
                self.admin.replica = replica
                self._ready.set()
                await self._stop.wait()
                self._drain(listeners)
                with trio.move_on_after(cfg.shutdown_grace):
                    await finished.wait()  # every connection ended (watchers answered)
                serving.cancel()
                refusal_lines.cancel()
                fan_out.cancel()
                self._refusals.log(cfg.refusal_log_interval)  # the last interval's lines

    def _vm_app(self) -> App:
        """What answers VM-facing requests (test mode wraps it; nothing else does)."""
        return _VmApp(self)

    def _admin_app(self) -> App:
        return _AdminApp(self)

    def _open_sockets(self) -> tuple[list[socket.socket], list[socket.socket]]:
        given = self._sockets if self._sockets is not None else inherited()
        vm = list(given.get("vm", []))
        admin = list(given.get(ADMIN_NAME, []))
        if not vm:
            vm = [bind(self.config.listen)]
        if not admin:
            admin = [bind(self.config.admin_listen)]
        for vm_sock in vm:  # inherited sockets too: the admin API must stay out of reach
            for admin_sock in admin:
                check_separate(Address(*vm_sock.getsockname()[:2]),
                               Address(*admin_sock.getsockname()[:2]))
        return vm, admin

    def _known(self, peer: str) -> bool:
        """A caller the view maps to a VM (before the replay, everyone: they get 410)."""
        return self.api.view is None or self.api.caller_vm(peer) is not None

    async def _log_refusals(self, scope: trio.CancelScope) -> None:
        interval = self.config.refusal_log_interval
        with scope:
            while True:
                await trio.sleep(interval)
                self._refusals.log(interval)

    async def _fan_out(self, scope: trio.CancelScope) -> None:
        with scope:
            await self.watches.run()

    def _drain(self, listeners: list[Listener]) -> None:
        self.draining = True
        for listener in listeners:
            listener.drain()
        self.watches.drain()

    # -- what the pure handlers ask for ---------------------------------------------------
    def _wake(self, doc_key: tuple[str, ...]) -> None:
        self.watches.changed(doc_key)

    async def park(self, park: Park, reply: Reply | None = None) -> Response:
        """Wait without polling for the VM's document to change (or the deadline, or the
        drain), re-checking the value's ETag at each wake-up. With a ``reply`` (the
        connection's), a change's fan-out may answer on the connection itself first: the
        answer returned is then ``reply.response``, already sent (``reply.sent`` bytes)."""
        deadline = trio.current_time() + park.timeout
        watches = self.watches
        watcher = watches.add(park, reply)
        try:
            while True:
                timed_out = self.draining
                if not timed_out:
                    with trio.move_on_at(deadline) as scope:
                        await watches.wait(watcher)
                    timed_out = scope.cancelled_caught or self.draining
                if reply is not None and reply.response is not None:
                    return reply.response  # the fan-out answered (whatever woke us since)
                result = self.api.resume(park, self.clock(), timed_out)
                if isinstance(result, Response):
                    return result
        finally:
            watches.remove(watcher)
            self.api.release(park)

    async def submit(self, submit: Submit) -> Response:
        assert self.replica is not None
        try:
            await self.replica.submit(submit.events, source=submit.source)
        except ImdsError as exc:  # ValidationError 400; StorageError 500; Unavailable 503
            answer = submit.response
            return attrs.evolve(failure(exc, route=answer.route), vm=answer.vm,
                                api_version=answer.api_version)
        if submit.source == _schedule.APPROVAL_SOURCE:
            # Answer what happened: logged is not enough if another record wins.
            masked = _schedule.not_in_effect(self.replica.view, submit.events)
            if masked:
                answer = submit.response
                return attrs.evolve(error(
                    409, f"Approval of {', '.join(masked)} did not take effect: a newer "
                    "record for it is in place", route=answer.route), vm=answer.vm,
                    api_version=answer.api_version)
        return submit.response

    def record(self, request: Request, peer: str, response: Response, received: float,
               sent: int, seconds: float) -> None:
        """Tell the observer of one answered VM request (``App.answered``: ``_VmApp`` has
        this very method as its ``answered``, one call fewer per request)."""
        if self._silent:
            return
        refused = response.refused
        answered = self._answered
        if refused is None and answered is not None:
            # The request's start, from ``received``: a watcher answered by the fan-out is
            # recorded after its answer left (``seconds`` ends at the send).
            answered(self.clock() - (time.perf_counter() - received), self._id_prefix,
                     next(self._ids), peer, request.method, request.target, response, sent,
                     seconds)
            return
        count: Callable[[AccessRecord], None] = self.observer.request
        if refused is not None and refused in AGGREGATED and self._count_only is not None \
                and not self._refusals.first(peer, refused):
            count = self._count_only  # counted; its line is the interval's summary
        count(AccessRecord(
            time=self.clock() - (time.perf_counter() - received),
            request_id=f"{self._id_prefix}{next(self._ids):x}",
            caller=peer, vm=response.vm, method=request.method, route=response.route,
            path=request.path, api_version=response.api_version, status=response.status,
            bytes=sent, seconds=seconds, refused=refused, watch=response.watch))


class _VmApp:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.answered: Callable[[Request, str, Response, float, int, float], None] = \
            server.record

    async def respond(self, request: Request, peer: str) -> Response:
        server = self.server
        if server.replica is None:
            await self._hold()
        result = server.api.handle(request, peer, server.clock())
        if isinstance(result, Park):
            return await server.park(result)
        if isinstance(result, Response):
            return result
        return await self._act(result)

    async def respond_watching(self, request: Request, peer: str, reply: Reply) -> Response:
        """``respond`` for a request that may park, with the connection's ``reply``: a
        change's fan-out may answer on the connection itself (see ``Server.park``)."""
        server = self.server
        if server.replica is None:
            await self._hold()
        result = server.api.handle(request, peer, server.clock())
        if isinstance(result, Park):
            return await server.park(result, reply)
        if isinstance(result, Response):
            return result
        return await self._act(result)

    async def _act(self, result: Submit | Issue | Offload) -> Response:
        server = self.server
        if isinstance(result, Submit):
            return await server.submit(result)
        if isinstance(result, Issue):
            return await answer_issue(server.api.identity, result, server.clock)
        # A few threads at most: each VM is rate-limited, and waiting here costs the loop
        # nothing.
        return await trio.to_thread.run_sync(result.work, limiter=server.offload_limiter)

    async def _hold(self) -> None:
        # A short replay (a restart) is waited out rather than refused: the guest sees a
        # slow answer, not a 410. A long one gets 410 + Retry-After.
        with trio.move_on_after(self.server.config.startup_hold):
            await self.server._ready.wait()


class _AdminApp:
    def __init__(self, server: Server) -> None:
        self.server = server

    async def respond(self, request: Request, peer: str) -> Response:
        return await self.server.admin.handle(request)

    def answered(self, request: Request, peer: str, response: Response, received: float,
                 sent: int, seconds: float) -> None:
        pass  # admin requests are not VM traffic; telemetry counts its own routes


def _adapter_statistics(sources: list[Any]) -> dict[str, dict[str, Any]]:
    """``statistics()`` of the configured sources that have one, as plain dicts."""
    out: dict[str, dict[str, Any]] = {}
    for source in sources:
        stats = getattr(source, "statistics", None)
        if callable(stats):
            value = stats()
            if attrs.has(type(value)):
                out[source.name] = attrs.asdict(value)
    return out
