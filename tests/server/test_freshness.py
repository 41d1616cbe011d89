"""``Age`` and ``Imds-Freshness``: right after a change and right after a restart (11.15)."""

from __future__ import annotations

from typing import Any

from imds_replica import Checkpoint, Event, LivelinessTracker, MemoryLog, View
from imds_server import Park, Request, Response
from imds_server._api import ApiPolicy, VmApi

from .conftest import CALLER_A, VM_A, V, fleet_events, get, running

NOW = 1000.0
MD = {"metadata": "true"}  # parsed requests carry lower-case names


def test_a_watcher_woken_by_a_change_gets_the_age_after_the_change(
        view: View, liveliness: LivelinessTracker) -> None:
    api = VmApi(ApiPolicy(rate_limit=0), started=NOW - 100)
    api.attach(view, liveliness)
    target = f"/metadata/instance/compute/tags?api-version={V}&format=text"
    first = api.handle(Request("GET", target, MD), CALLER_A, NOW + 42.2)
    assert isinstance(first, Response)
    assert dict(first.headers)["Age"] == "42"  # tags last spoke at NOW
    parked = api.handle(Request("GET", target + "&wait_for_change=true", MD), CALLER_A,
                        NOW + 42.3)
    assert isinstance(parked, Park)
    # In the same second, tags speaks and changes the value; the watcher wakes.
    liveliness.applied("tags", NOW + 42.4, 11)
    view.apply(Event("tags", ("vms", VM_A, "compute", "tags"), 11, "owner:new"))
    woken = api.resume(parked, NOW + 42.5, timed_out=False)
    assert isinstance(woken, Response)
    assert woken.body == b"owner:new"
    headers = dict(woken.headers)
    assert headers["Age"] == "0"
    assert "tags;state=live;age=0" in headers["Imds-Freshness"]


async def test_after_a_restart_a_polled_source_shows_its_real_state_everywhere() -> None:
    """Before: after a restart a polled source was missing from ``/sources`` (and so from
    ``/metrics``) but listed as ``unknown`` in ``Imds-Freshness``."""
    region = Event("region", ("vms", VM_A, "compute", "zone"), 5, "2")
    records: list[Any] = [(tuple(fleet_events()), None),
                          ((region,), Checkpoint("region", "etag-7", contact=NOW - 20))]
    async with running(log=MemoryLog(records), seed=[], clock=lambda: NOW) as server:
        sources = (await get(server.admin_address, "/sources", headers={})).json()
        assert sources["region"]["state"] == "live"
        assert sources["region"]["last_contact"] == NOW - 20
        assert sources["region"]["newest_version"] == 5
        assert sources["fabric"]["state"] == "live"  # pushed, replayed
        replica = server.replica
        assert replica is not None
        assert "region" in replica.liveliness.snapshot(NOW)  # what /metrics reads
        reply = await get(server.vm_address, f"/metadata/instance?api-version={V}")
        assert reply.status == 200
        fresh = reply.headers["imds-freshness"]
        assert "region;state=live;age=20" in fresh
        assert "fabric;state=live;age=0" in fresh
        # Posted through the admin API without a cursor, a counter-versioned source has
        # nothing that dates its data: it is unknown, and ages from the start.
        assert "tags;state=unknown" in fresh
        assert sources["tags"]["state"] == "unknown"
