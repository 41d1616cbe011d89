"""``imds-server serve --test-mode``: the production server with a test harness around it.

``TestModeServer`` is a ``Server`` whose VM-facing app is wrapped: before the real handler
runs, the fault table may delay the request, answer it with a forced status, or drop the
connection; every answer (VM-facing and admin) carries ``Imds-Test-Mode``. The real
handler (``VmApi``) is untouched and knows nothing of this. A ``TestMode`` controller runs
the scheduled-event lifecycle and scenarios as tasks next to the server, publishing through
the replica like any source, and adds admin routes under ``/testmode/``.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

from imds_replica import ClientError, ConfigError, HybridClock, ImdsError, Replica

from .._admin import AdminHandler
from .._connection import App, CloseConnection
from .._request import JSON, Request, Response, error
from .._server import Server
from ._faults import FaultRule, FaultTable
from ._fleet import Fleet
from ._lifecycle import Lifecycle, PlannedEvent, register_key
from ._scenario import Step, key_of, parse_steps

HEADER = "Imds-Test-Mode"
PRODUCTION_ADDRESS = "169.254.169.254"
#: The source test mode publishes as (documents it changes, scheduled events it runs).
SOURCE = "fabric"
_MESSAGES = {404: "Not found", 410: "The service is updating; retry shortly.",
             429: "Too many requests", 500: "Internal error",
             503: "Service unavailable"}


def refuse_production(addresses: Sequence[tuple[str, int]], *, forced: bool) -> None:
    """Test mode never answers real guests by accident: refuse 169.254.169.254 (or a
    wildcard, which includes it) unless ``forced``."""
    if forced:
        return
    for host, port in addresses:
        if host in (PRODUCTION_ADDRESS, "0.0.0.0", "", "::") or \
                (host.startswith("::ffff:") and host.endswith(PRODUCTION_ADDRESS)):
            raise ConfigError(f"test mode refuses to serve on {host or '*'}:{port}, which "
                              "real guests reach; use another address, or "
                              "--allow-production-address", key="listen")


class TestMode:
    """Faults, the scheduled-event lifecycle and scenarios of one test-mode server."""

    __test__ = False  # not a pytest class

    def __init__(self, fleet: Fleet | None = None, *, time_scale: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        if time_scale <= 0:
            raise ConfigError("must be > 0", key="time-scale")
        self.fleet = fleet or Fleet()
        self.time_scale = time_scale
        self.clock = clock
        self.faults = FaultTable()
        self.lifecycle = Lifecycle(time_scale=time_scale)
        self.replica: Replica | None = None
        # Unbounded: test mode writes past every version its fleet file seeded, however far.
        self._hlc = HybridClock(max_drift_ms=None)
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.scenarios_run = 0
        #: Set once the fleet is published and its events planned (the CLI announces
        #: "serving" only then, so a guest started on that line never meets an empty host).
        self.seeded = trio.Event()

    # -- faults (the clock is scaled: a rule of 30 s lasts 30 / time_scale) -----------------
    def add_fault(self, rule: FaultRule) -> int:
        if rule.duration is not None:
            rule = attrs.evolve(rule, duration=rule.duration / self.time_scale)
        return self.faults.add(rule, self.clock())

    def fault_for(self, path: str, vm: str | None) -> FaultRule | None:
        return self.faults.match(path, vm, self.clock())

    # -- running ----------------------------------------------------------------------------
    async def run(self, server: Server, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Seed the fleet, then drive the lifecycle (and scenarios) until cancelled."""
        replica = await server.wait_ready()
        self.replica = replica
        self._hlc.observe(max((e.version for e in replica.view.registers(())), default=0),
                          int(self.clock() * 1000))
        for rule in self.fleet.faults:
            self.add_fault(rule)
        if self.fleet.events:
            await replica.submit(list(self.fleet.events))
        now = self.clock()
        for plan in self.fleet.planned:
            self.lifecycle.add(plan, now)
        replica.view.subscribe(lambda _key: self._wake.set())
        self.seeded.set()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.fleet.scenario:
                self.start_scenario(self.fleet.scenario)
            task_status.started()
            await self._drive()

    async def _drive(self) -> None:
        assert self.replica is not None
        view = self.replica.view
        while True:
            for vm, event_id in self.lifecycle.published():
                event = view.get(("vms", vm, "scheduledevents", event_id))
                if event is not None and event.deleted:  # removed by an operator
                    self.lifecycle.forget(vm, event_id)
            now = self.clock()
            changes = self.lifecycle.step(now, self._approved)
            if changes:
                await self.publish([(key, value) for key, value in changes])
                continue
            deadline = self.lifecycle.next_deadline()
            wait = 3600.0 if deadline is None else max(deadline - now, 0.0)
            with trio.move_on_after(min(wait, 3600.0)):
                await self._wake.wait()
            self._wake = trio.Event()

    def _approved(self, vm: str, event_id: str) -> bool:
        assert self.replica is not None
        event = self.replica.view.get(("vms", vm, "approvals", event_id))
        return event is not None and not event.deleted and \
            isinstance(event.value, dict) and event.value.get("approved") is True

    def schedule(self, plan: PlannedEvent) -> None:
        self.lifecycle.add(plan, self.clock())
        self._wake.set()

    def postpone(self, vm: str, event_id: str, seconds: float) -> None:
        self.lifecycle.postpone(vm, event_id, seconds)
        self._wake.set()

    async def publish(self, changes: Sequence[tuple[tuple[str, ...], Any]],
                      source: str = SOURCE) -> None:
        """Changes (value None: delete) as one batch, each at a fresh HLC version."""
        assert self.replica is not None
        batch: list[dict[str, Any]] = []
        for key, value in changes:
            version = self._hlc.now(int(self.clock() * 1000))
            event: dict[str, Any] = {"source": source, "key": list(key), "version": version}
            if value is None:
                event["deleted"] = True
            else:
                event["value"] = value
            batch.append(event)
        await self.replica.submit(batch)

    # -- scenarios --------------------------------------------------------------------------
    def start_scenario(self, steps: Sequence[Step]) -> None:
        if self._nursery is None:
            raise ClientError("test mode is still starting; retry shortly")
        self.scenarios_run += 1
        self._nursery.start_soon(self._scenario, tuple(steps))

    async def _scenario(self, steps: tuple[Step, ...]) -> None:
        start = trio.current_time()
        for step in steps:
            await trio.sleep_until(start + step.at / self.time_scale)
            try:
                await self.apply(step)
            except ImdsError as exc:  # a bad step is reported and skipped, not fatal
                print(f"imds-server test mode: scenario step at {step.at}s "
                      f"({step.action}) failed: {exc}", flush=True)

    async def apply(self, step: Step) -> None:
        arg = step.argument
        if step.action == "put":
            await self.publish([(key_of(str(arg["vm"]), str(arg["path"])), arg["value"])])
        elif step.action == "delete":
            await self.publish([(key_of(str(arg["vm"]), str(arg["path"])), None)])
        elif step.action == "event":
            self.schedule(PlannedEvent.from_mapping(arg))
        elif step.action == "fault":
            self.add_fault(FaultRule.from_mapping(arg))
        elif step.action == "clear-faults":
            self.faults.remove()
        elif step.action == "postpone":
            self.postpone(str(arg["vm"]), str(arg["id"]), float(arg["seconds"]))
        elif step.action == "events":
            assert self.replica is not None
            await self.replica.submit(arg)

    # -- admin routes -----------------------------------------------------------------------
    def routes(self) -> dict[str, AdminHandler]:
        return {"/testmode/faults": self._faults_route,
                "/testmode/scheduledevents": self._events_route,
                "/testmode/scenario": self._scenario_route}

    async def _faults_route(self, request: Request) -> Response:
        route = "/testmode/faults"
        if request.method == "GET":
            return _json(200, {"faults": self.faults.listing(self.clock())}, route)
        if request.method == "DELETE":
            ident = _query_int(request, "id")
            return _json(200, {"removed": self.faults.remove(ident)}, route)
        if request.method != "POST":
            return _not_allowed(request, route, "GET, POST, DELETE")
        body = _body(request)
        items = body.get("faults", [body]) if isinstance(body, dict) else body
        if not isinstance(items, list):
            raise ClientError('body must be a fault object or {"faults": [...]}')
        rules = [FaultRule.from_mapping(item) for item in items]  # all valid, or none added
        return _json(200, {"ids": [self.add_fault(rule) for rule in rules]}, route)

    async def _events_route(self, request: Request) -> Response:
        route = "/testmode/scheduledevents"
        if request.method != "POST":
            return _not_allowed(request, route, "POST")
        body = _body(request)
        if isinstance(body, dict) and "postpone" in body:
            spec = body["postpone"]
            self.postpone(str(spec["vm"]), str(spec["id"]), float(spec["seconds"]))
            return _json(200, {"postponed": spec["id"]}, route)
        plan = PlannedEvent.from_mapping(body)
        self.schedule(plan)
        return _json(200, {"scheduled": plan.event_id, "key": list(register_key(plan))},
                     route)

    async def _scenario_route(self, request: Request) -> Response:
        route = "/testmode/scenario"
        if request.method != "POST":
            return _not_allowed(request, route, "POST")
        body = _body(request)
        steps = parse_steps(body.get("steps") if isinstance(body, dict) else body)
        self.start_scenario(steps)
        return _json(200, {"started": len(steps), "run": self.scenarios_run}, route)


class TestModeServer(Server):
    """A ``Server`` answering through ``TestMode``'s faults, marked as test mode."""

    __test__ = False

    def __init__(self, config: Any, test_mode: TestMode, *, allow_production: bool = False,
                 extra_routes: Mapping[str, AdminHandler] | None = None,
                 **kwargs: Any) -> None:
        routes = {**(extra_routes or {}), **_guarded(test_mode.routes())}
        super().__init__(config, extra_routes=routes, **kwargs)
        self.test_mode = test_mode
        self.allow_production = allow_production

    def _vm_app(self) -> App:
        return _FaultyApp(super()._vm_app(), self)

    def _admin_app(self) -> App:
        return _MarkedApp(super()._admin_app())

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.test_mode.run, self)
            await super()._run(task_status)
            nursery.cancel_scope.cancel()

    def _open_sockets(self) -> tuple[list[socket.socket], list[socket.socket]]:
        vm, admin = super()._open_sockets()
        refuse_production([s.getsockname()[:2] for s in vm], forced=self.allow_production)
        return vm, admin


def _mark(response: Response, value: str = "on") -> Response:
    return attrs.evolve(response, headers=(*response.headers, (HEADER, value)))


class _MarkedApp:
    def __init__(self, inner: App) -> None:
        self.inner = inner

    async def respond(self, request: Request, peer: str) -> Response:
        return _mark(await self.inner.respond(request, peer))

    def answered(self, request: Request, peer: str, response: Response, received: float,
                 sent: int, seconds: float) -> None:
        self.inner.answered(request, peer, response, received, sent, seconds)


class _FaultyApp(_MarkedApp):
    def __init__(self, inner: App, server: TestModeServer) -> None:
        super().__init__(inner)
        self.server = server

    async def respond(self, request: Request, peer: str) -> Response:
        server = self.server
        vm = server.api.caller_vm(peer) if server.api.view is not None else None
        rule = server.test_mode.fault_for(request.path, vm)
        if rule is None:
            return _mark(await self.inner.respond(request, peer))
        if rule.delay:
            await trio.sleep(rule.delay)
        if rule.drop:
            raise CloseConnection
        if rule.status is None:  # a delay only
            return _mark(await self.inner.respond(request, peer), "on; fault=delay")
        headers = (("Retry-After", str(rule.retry_after)),) \
            if rule.retry_after is not None else ()
        forced = error(rule.status, _MESSAGES[rule.status], headers=headers,
                       refused="test-mode-fault")
        return _mark(attrs.evolve(forced, vm=vm), f"on; fault={rule.status}")


def _guarded(routes: Mapping[str, AdminHandler]) -> dict[str, AdminHandler]:
    """Admin handlers whose ``ClientError`` becomes a 400 naming what was wrong."""
    def wrap(handler: AdminHandler) -> AdminHandler:
        async def guarded(request: Request) -> Any:
            try:
                return await handler(request)
            except ClientError as exc:
                return error(400, exc.message, route=request.path)
            except ConfigError as exc:
                return error(400, str(exc), route=request.path)
        return guarded
    return {path: wrap(handler) for path, handler in routes.items()}


def _body(request: Request) -> Any:
    try:
        return json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClientError(f"body is not valid JSON: {exc}") from None


def _query_int(request: Request, name: str) -> int | None:
    for part in request.query_string.split("&"):
        key, _, value = part.partition("=")
        if key == name:
            if not value.isdigit():
                raise ClientError(f"{name} must be a number")
            return int(value)
    return None


def _json(status: int, body: Any, route: str) -> Response:
    return Response(status, json.dumps(body).encode(), JSON, route=route)


def _not_allowed(request: Request, route: str, allowed: str) -> Response:
    return error(405, f"Method {request.method} not allowed", route=route,
                 headers=(("Allow", allowed),))
