"""Parking without sockets, on a MockClock (autojump): timeouts and wake-ups."""

from __future__ import annotations

import trio

from imds_replica import Event, LivelinessTracker, View
from imds_server import Park, Request, Server

from .conftest import CALLER_A, VM_A, V, make_config


def _server(view: View, liveliness: LivelinessTracker) -> Server:
    server = Server(make_config(rate_limit=0.0), clock=lambda: 1000.0)
    server.api.attach(view, liveliness)
    view.subscribe(server._wake)
    return server


def _park(server: Server, timeout: int) -> Park:
    target = (f"/metadata/instance/compute/name?api-version={V}&format=text"
              f"&wait_for_change=true&timeout_sec={timeout}")
    park = server.api.handle(Request("GET", target, {"metadata": "true"}), CALLER_A, 1000.0)
    assert isinstance(park, Park)
    return park


async def test_park_times_out_on_the_clock(view: View, liveliness: LivelinessTracker,
                                           autojump_clock: trio.testing.MockClock) -> None:
    server = _server(view, liveliness)
    started = trio.current_time()
    response = await server.park(_park(server, 45))
    assert trio.current_time() - started == 45
    assert response.body == b"vm-a-name"
    assert server.api.parked == 0


async def test_park_wakes_on_change(view: View, liveliness: LivelinessTracker,
                                    autojump_clock: trio.testing.MockClock) -> None:
    server = _server(view, liveliness)
    out = []

    async def watcher() -> None:
        out.append(await server.park(_park(server, 300)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watcher)
        await trio.sleep(10)
        view.apply(Event("fabric", ("vms", VM_A, "compute", "name"), 99, "changed"))
    assert out[0].body == b"changed"
    assert trio.current_time() < 11
