"""The admin API (JSON, operators and the host agent only; never VM-facing).

``GET /healthz``, ``GET /sources``, ``POST /events``, ``GET /view?prefix=a/b``, plus the
extension point ``extra_routes``: a mapping from an exact path to an async handler taking
the ``Request`` and returning a ``Response``, ``bytes`` (sent as JSON), or an async iterator
of byte chunks (sent with chunked encoding, for streams such as ``GET /logs``). Telemetry
adds ``GET /metrics`` and ``GET /logs`` this way; a built-in path cannot be overridden.

``POST /events`` refuses (400, naming the event) an event that claims a source name the
server owns: ``owned_sources`` (the guest-approval source) and the sources the replica runs.
Their data is written by the server alone, and one forged event under such a name (a
version at 2**63-1, say) would outrank every later write of it. ``allow_owned_sources``
(the ``admin-allow-owned-sources`` setting) lifts this, for repairs by hand.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import trio

from imds_replica import DEFAULT_MAX_VALUE_BYTES, Event, ImdsError, ValidationError

from ._ingest import BodyError, decode_events, gc_paused, submit_events
from ._render import to_json
from ._request import JSON, BadQuery, Request, Response, error, failure, parse_query

if TYPE_CHECKING:
    from imds_replica import Replica

AdminResult = Response | bytes | AsyncIterator[bytes]
AdminHandler = Callable[[Request], Awaitable[AdminResult]]
BUILTIN = ("/healthz", "/sources", "/events", "/view")
MAX_VIEW_REGISTERS = 10_000


class AdminApi:
    """Answers admin requests from the replica (``None`` while it is recovering)."""

    def __init__(self, *, clock: Callable[[], float],
                 extra_routes: Mapping[str, AdminHandler] | None = None,
                 status: Callable[[], Mapping[str, Any]] | None = None,
                 owned_sources: Iterable[str] = (), allow_owned_sources: bool = False) -> None:
        clash = set(extra_routes or ()) & set(BUILTIN)
        if clash:
            raise ValueError(f"extra_routes may not replace {sorted(clash)}")
        self.replica: Replica | None = None
        self.clock = clock
        self.extra_routes = dict(extra_routes or {})
        self.status = status or dict
        #: Per source name, what its adapter's ``statistics()`` says (stream sources: cursor,
        #: pending count = lag in messages, refusals); shown under ``"adapter"``.
        self.source_details: Callable[[], Mapping[str, Mapping[str, Any]]] = dict
        self.owned_sources = frozenset(owned_sources)
        self.allow_owned_sources = allow_owned_sources

    async def handle(self, request: Request) -> Response:
        path = request.path
        try:
            params = parse_query(request.query_string)
        except BadQuery as exc:
            return error(400, str(exc), route=path)
        extra = self.extra_routes.get(path)
        if extra is not None:
            return _as_response(await extra(request), path)
        if path not in BUILTIN:
            return error(404, "Not found")
        allowed = "POST" if path == "/events" else "GET"
        if request.method != allowed and not (allowed == "GET" and request.method == "HEAD"):
            return error(405, f"Method {request.method} not allowed", route=path,
                         headers=(("Allow", allowed),))
        if path == "/healthz":
            return self._healthz()
        if self.replica is None:
            return error(503, "Starting: replaying the log", route=path,
                         headers=(("Retry-After", "1"),))
        if path == "/sources":
            now = self.clock()
            body = {name: status.to_dict()
                    for name, status in self.replica.liveliness.snapshot(now).items()}
            for name, details in self.source_details().items():
                if name in body:
                    body[name]["adapter"] = dict(details)
            return _json(200, body, path)
        if path == "/view":
            return self._view(params)
        return await self._events(request)

    def _healthz(self) -> Response:
        ready = self.replica is not None
        # ``status`` may say "degraded" (the log refuses writes; reads are served): still
        # 200, the process is up and answering.
        body = {"status": "ok" if ready else "starting", **self.status()}
        return _json(200 if ready else 503, body, "/healthz")

    def _view(self, params: Mapping[str, str]) -> Response:
        assert self.replica is not None
        prefix = tuple(p for p in params.get("prefix", "").split("/") if p)
        registers: list[dict[str, Any]] = []
        truncated = False
        for event in self.replica.view.registers(prefix):
            if len(registers) >= MAX_VIEW_REGISTERS:
                truncated = True
                break
            registers.append(event.to_dict())
        return _json(200, {"prefix": list(prefix), "registers": registers,
                           "truncated": truncated}, "/view")

    async def _events(self, request: Request) -> Response:
        assert self.replica is not None
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
        # Anything but msgpack is read as JSON: ``curl -d`` sends a form type. Decoded,
        # validated and submitted in slices, so that a large batch does not hold the loop.
        with gc_paused():
            try:
                events = await decode_events(request.body, kind, max_value_bytes=getattr(
                    self.replica, "_max_value_bytes", DEFAULT_MAX_VALUE_BYTES),
                    min_key_parts=self.replica.view.document_depth)
            except BodyError as exc:
                extra = {"index": exc.index} if exc.index is not None else None
                return error(400, exc.message, extra=extra, route="/events")
            try:
                if not self.allow_owned_sources:
                    await self._refuse_owned(events)
                total, changed = await submit_events(self.replica, events)
            except ValidationError as exc:
                return failure(exc, extra={"index": exc.index}, route="/events")
            except ImdsError as exc:
                return failure(exc, route="/events")
        return _json(200, {"events": total, "changed": changed}, "/events")

    async def _refuse_owned(self, events: Sequence[Event]) -> None:
        assert self.replica is not None
        owned = self.owned_sources | set(self.replica.source_names)
        for i, event in enumerate(events):
            claimed = event.source
            if claimed in owned:
                raise ValidationError(
                    f"source: {claimed!r} is written by this server itself; posting events "
                    "under it needs admin-allow-owned-sources = true", index=i)
            if not (i + 1) % _CHECK_SLICE:
                # 150,000 events of a maximum batch took 10-20 ms in one go: the VM
                # listeners get the loop every few thousand.
                await trio.lowlevel.checkpoint()


_CHECK_SLICE = 4096  # events checked between two checkpoints


def _json(status: int, body: Any, route: str) -> Response:
    return Response(status, to_json(body), JSON, route=route)


def _as_response(result: AdminResult, route: str) -> Response:
    if isinstance(result, Response):
        return result
    if isinstance(result, bytes):
        return Response(200, result, JSON, route=route)
    return Response(200, b"", "text/plain; charset=utf-8", stream=result, route=route)
