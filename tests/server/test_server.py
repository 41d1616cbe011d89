"""The server over real sockets: the error table, isolation, rate limits, watch, restarts
of the replica, the admin API, the observer and statistics."""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

from imds_replica import Checkpoint, Event, MemoryLog, StorageError, Unavailable, View
from imds_server import AccessRecord, Request, Response, Server, open_log

from .._loop import loop_ticks
from .conftest import (
    CALLER_A,
    CALLER_B,
    EVENT_ID,
    MD,
    VM_A,
    V,
    exchange,
    fleet_events,
    get,
    make_config,
    request_bytes,
    running,
    wait_until,
)

pytestmark = pytest.mark.integration

SE = "/metadata/scheduledevents?api-version=2020-07-01"


class FailingLog(MemoryLog):
    """Appends fail once armed: the replica's storage is broken (or unavailable)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: Exception | None = None

    async def append(self, events: Sequence[Event],
                     checkpoint: Checkpoint | None = None) -> tuple[bool, ...]:
        if self.fail is not None:
            raise self.fail
        return await super().append(events, checkpoint)


class SlowLog(MemoryLog):
    """Recovery waits for ``release``: the server is still replaying."""

    def __init__(self) -> None:
        super().__init__()
        self.release = trio.Event()

    async def run(self, view: View, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await self.release.wait()
        await super().run(view, task_status=task_status)


ROWS = [
    (400, {}, f"/metadata/instance?api-version={V}", "no-metadata-header"),
    (400, {**MD, "X-Forwarded-For": "10.0.0.1"}, f"/metadata/instance?api-version={V}", None),
    (400, MD, "/metadata/instance?api-version=1999-01-01", None),
    (400, MD, "/metadata/instance", None),
    (400, MD, f"/metadata/instance?api-version={V}&api-version={V}", None),
    (400, MD, f"/metadata/instance/compute/name?api-version={V}", None),
    (404, MD, f"/metadata/instance/compute/nothing?api-version={V}", None),
    (404, MD, f"/metadata/other?api-version={V}", None),
]


@pytest.mark.parametrize(("status", "headers", "target", "_"), ROWS)
async def test_error_table_rows(status: int, headers: dict[str, str], target: str,
                                _: object) -> None:
    async with running() as server:
        reply = await get(server.vm_address, target, headers=headers)
        assert reply.status == status
        assert reply.headers["content-type"].startswith("application/json")
        assert "error" in reply.json()


async def test_error_table_malformed_405_429() -> None:
    async with running(make_config(rate_limit=2.0)) as server:
        garbage = await exchange(server.vm_address, b"GARBAGE \x00\x01\r\n\r\n")
        assert garbage[0].status == 400
        reply = await get(server.vm_address, f"/metadata/instance?api-version={V}",
                          method="DELETE")
        assert reply.status == 405
        assert reply.headers["allow"] == "GET, HEAD"
        await get(server.vm_address, f"/metadata/instance?api-version={V}")
        limited = await get(server.vm_address, f"/metadata/instance?api-version={V}")
        assert limited.status == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json() == {"error": "Too many requests"}


async def test_error_table_410_while_replaying_then_200() -> None:
    log = SlowLog()
    server = Server(make_config(startup_hold=0.0), log=log)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        reply = await get(server.vm_address, f"/metadata/instance?api-version={V}")
        assert reply.status == 410
        assert reply.headers["retry-after"] == "5"
        health = await get(server.admin_address, "/healthz", headers={})
        assert health.status == 503
        assert health.json()["status"] == "starting"
        log.release.set()
        replica = await server.wait_ready()
        await replica.submit(fleet_events())
        reply = await get(server.vm_address, f"/metadata/instance?api-version={V}")
        assert reply.status == 200
        server.shutdown()


async def test_error_table_500_and_503_on_storage_failure() -> None:
    log = FailingLog()
    async with running(log=log) as server:
        post = json.dumps({"StartRequests": [{"EventId": EVENT_ID}]}).encode()
        log.fail = StorageError("disk on fire")
        reply = await get(server.vm_address, SE, method="POST", body=post)
        assert reply.status == 500
        log.fail = Unavailable("log busy", retry_after=3)
        reply = await get(server.vm_address, SE, method="POST", body=post)
        assert (reply.status, reply.headers["retry-after"]) == (503, "3")
        # Reads are unaffected.
        assert (await get(server.vm_address, f"/metadata/instance?api-version={V}")).status \
            == 200


async def test_isolation_between_two_vms() -> None:
    async with running() as server:
        a = await get(server.vm_address, f"/metadata/instance?api-version={V}", source=CALLER_A)
        b = await get(server.vm_address, f"/metadata/instance?api-version={V}", source=CALLER_B)
        assert a.json()["compute"]["vmId"] == VM_A
        assert b.json()["compute"]["vmId"] == "vm-b"
        se_b = await get(server.vm_address, SE, source=CALLER_B)
        assert se_b.json()["Events"] == []
        stranger = await get(server.vm_address, "/metadata/versions", source="127.0.0.9")
        assert stranger.status == 403
        assert stranger.json() == {"error": "Forbidden"}
        forged = await get(server.vm_address, f"/metadata/instance?api-version={V}",
                           source="127.0.0.9",
                           headers={**MD, "X-Forwarded-For": CALLER_A, "Forwarded":
                                    f"for={CALLER_A}", "X-Real-Ip": CALLER_A})
        assert forged.status == 403


async def test_rate_limit_is_per_vm_over_sockets() -> None:
    async with running(make_config(rate_limit=3.0)) as server:
        target = f"/metadata/instance/compute/name?api-version={V}&format=text"
        statuses = [(await get(server.vm_address, target)).status for _ in range(5)]
        assert statuses[:3] == [200, 200, 200]
        assert statuses[-1] == 429
        assert (await get(server.vm_address, target, source=CALLER_B)).status == 200
        assert server.statistics().rate_limited >= 1


async def test_keep_alive_and_pipelining_in_order() -> None:
    async with running(make_config(rate_limit=0.0)) as server:
        data = b"".join(request_bytes("GET", f"/metadata/instance/compute/{field}"
                                      f"?api-version={V}&format=text", MD, close=False)
                        for field in ("name", "vmId", "location"))
        replies = await exchange(server.vm_address, data, expect=3)
        assert [r.body for r in replies] == [b"vm-a-name", VM_A.encode(), b"westeurope"]


async def test_head_has_headers_no_body() -> None:
    async with running() as server:
        reply = await get(server.vm_address, f"/metadata/instance?api-version={V}",
                          method="HEAD")
        assert reply.status == 200


async def test_etag_and_304_over_sockets() -> None:
    async with running(make_config(rate_limit=0.0)) as server:
        first = await get(server.vm_address, f"/metadata/instance?api-version={V}")
        assert first.headers["age"].isdigit()
        assert "fabric;state=live" in first.headers["imds-freshness"]
        again = await get(server.vm_address, f"/metadata/instance?api-version={V}",
                          headers={**MD, "If-None-Match": first.headers["etag"]})
        assert again.status == 304
        assert again.body == b""


async def test_watch_change_arrives_while_parked() -> None:
    async with running(make_config(rate_limit=0.0)) as server:
        assert server.replica is not None
        target = f"/metadata/instance/compute/name?api-version={V}&format=text"
        etag = (await get(server.vm_address, target)).headers["etag"]
        results: list[Any] = []

        async def watch() -> None:
            results.append(await get(server.vm_address, f"{target}&wait_for_change=true"
                                     f"&last_etag={etag.strip(chr(34))}&timeout_sec=30"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await wait_until(lambda: server.statistics().parked_watchers == 1)
            await server.replica.submit([Event("tags", ("vms", VM_A, "compute", "tags"), 50,
                                               "unrelated:change")])
            # The change's fan-out has compared ETags and left the watcher parked
            # (everything in this process is blocked): a change elsewhere in the document
            # does not answer.
            await trio.testing.wait_all_tasks_blocked()
            assert not results
            assert server.statistics().parked_watchers == 1
            await server.replica.submit([Event("fabric", ("vms", VM_A, "compute", "name"),
                                               50, "renamed")])
        [reply] = results
        assert reply.body == b"renamed"
        assert reply.headers["etag"] != etag
        assert server.statistics().parked_watchers == 0


async def test_watch_times_out_with_current_value() -> None:
    async with running(make_config(rate_limit=0.0)) as server:
        target = (f"/metadata/instance/compute/name?api-version={V}&format=text"
                  "&wait_for_change=true&timeout_sec=1")
        with trio.fail_after(5):
            reply = await get(server.vm_address, target)
        assert (reply.status, reply.body) == (200, b"vm-a-name")


async def test_shutdown_answers_parked_watchers() -> None:
    replies: list[Any] = []
    async with running(make_config(rate_limit=0.0)) as server:
        target = f"/metadata/instance?api-version={V}&wait_for_change=true&timeout_sec=60"

        async def watch() -> None:
            replies.append(await get(server.vm_address, target))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(watch)
            await wait_until(lambda: server.statistics().parked_watchers == 3)
            with trio.fail_after(5):
                server.shutdown()
                await server.stopped.wait()
    assert [r.status for r in replies] == [200, 200, 200]


@pytest.mark.parametrize("durable", [False, True])
async def test_approval_survives_restart(tmp_path: Path, durable: bool) -> None:
    memory = MemoryLog()

    def log() -> Any:
        return open_log(tmp_path / "data") if durable else MemoryLog(memory.records)

    post = json.dumps({"StartRequests": [{"EventId": EVENT_ID}]}).encode()
    async with running(log=log()) as server:
        reply = await get(server.vm_address, SE, method="POST", body=post)
        assert reply.status == 200
    async with running(log=log(), seed=()) as server:
        assert server.replica is not None
        event = server.replica.view.get(("vms", VM_A, "approvals", EVENT_ID))
        assert event is not None
        assert event.source == "guest"
        assert event.value["approved"] is True
        view = await get(server.admin_address, f"/view?prefix=vms/{VM_A}/approvals",
                         headers={})
        assert view.json()["registers"][0]["value"]["EventId"] == EVENT_ID


async def test_limits_close_or_4xx_and_others_still_served() -> None:
    config = make_config(max_request_line=100, max_header_bytes=1000, max_body_bytes=50,
                         max_connections_per_caller=3, header_timeout=0.5)
    async with running(config) as server:
        addr = server.vm_address
        assert (await exchange(addr, request_bytes("GET", "/" + "a" * 200)))[0].status == 414
        big = request_bytes("GET", "/metadata/versions", {"X-Big": "b" * 2000})
        assert (await exchange(addr, big))[0].status == 431
        body = request_bytes("POST", SE, MD, b"x" * 100)
        assert (await exchange(addr, body))[0].status == 413
        upgrade = request_bytes("GET", "/", {"Upgrade": "websocket", "Connection": "Upgrade"})
        statuses = [r.status for r in await exchange(addr, upgrade)]
        assert statuses in ([400], [403], [])
        # Slowloris: half a request, then nothing -> 408 after header_timeout.
        with trio.fail_after(5):
            slow = await exchange(addr, b"GET /metadata/versions HTTP/1.1\r\nHost: x\r\n")
        assert slow[0].status == 408
        # Per-caller connection limit: the 4th idle connection is closed at once.
        from .conftest import connect

        held = [await connect(addr) for _ in range(3)]
        extra = await connect(addr)
        with trio.fail_after(5):
            assert await extra.receive_some(100) == b""
        for stream in held:
            await stream.aclose()
        await extra.aclose()
        # The server has seen the closes, so the caller is under its limit again.
        await wait_until(lambda: server.statistics().connections_open == 0)
        assert (await get(addr, "/metadata/versions")).status == 200
        assert server.statistics().connections_refused >= 1
        assert server.statistics().protocol_errors >= 3


async def test_vm_facing_sockets_use_ttl_1() -> None:
    async with running() as server:
        listener = server.vm_listeners[0].socket
        assert listener.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 1
        admin = server.admin_listeners[0].socket
        assert admin.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) != 1


async def test_admin_api() -> None:
    async with running() as server:
        addr = server.admin_address
        assert (await get(addr, "/healthz", headers={})).json()["status"] == "ok"
        sources = (await get(addr, "/sources", headers={})).json()
        assert sources["fabric"]["state"] == "live"
        batch = {"events": [{"source": "tags", "key": ["vms", VM_A, "compute", "tags"],
                             "version": 99, "value": "via:json"}]}
        ok = await get(addr, "/events", method="POST", headers={
            "Content-Type": "application/json"}, body=json.dumps(batch).encode())
        assert ok.status == 200
        assert ok.json() == {"events": 1, "changed": 1}
        batch["events"][0]["version"] = 100
        batch["events"][0]["value"] = "via:msgpack"
        ok = await get(addr, "/events", method="POST", headers={
            "Content-Type": "application/msgpack"}, body=msgpack.packb(batch))
        assert ok.status == 200
        tags = await get(server.vm_address, f"/metadata/instance/compute/tags?api-version={V}"
                                            "&format=text")
        assert tags.body == b"via:msgpack"
        bad = {"events": [{"source": "tags", "key": ["k", "a"], "version": 1, "value": 1},
                          {"source": "BAD", "key": ["k2", "a"], "version": 1, "value": 1}]}
        reply = await get(addr, "/events", method="POST", body=json.dumps(bad).encode(),
                          headers={"Content-Type": "application/json"})
        assert reply.status == 400
        assert reply.json()["index"] == 1
        view = (await get(addr, "/view?prefix=k", headers={})).json()
        assert view["registers"] == []  # nothing of the bad batch applied
        for junk in (b"{", b"[]", b'{"events": 3}'):
            assert (await get(addr, "/events", method="POST", body=junk, headers={})).status \
                == 400
        assert (await get(addr, "/events", headers={})).status == 405
        assert (await get(addr, "/nothing", headers={})).status == 404
        callers = (await get(addr, "/view?prefix=callers", headers={})).json()
        assert [r["key"] for r in callers["registers"]] == [["callers", CALLER_A],
                                                            ["callers", CALLER_B]]


async def test_admin_body_limit() -> None:
    async with running(make_config(admin_max_body_bytes=100)) as server:
        reply = await get(server.admin_address, "/events", method="POST", body=b"x" * 500,
                          headers={})
        assert reply.status == 413


async def test_admin_extra_routes_body_and_stream() -> None:
    async def metrics(request: Request) -> bytes:
        return b'{"metric": 1}'

    async def logs(request: Request) -> Any:
        async def chunks() -> Any:
            for i in range(3):
                yield f"line {i}\n".encode()
        return chunks()

    async def custom(request: Request) -> Response:
        return Response(202, b"{}")

    routes = {"/metrics": metrics, "/logs": logs, "/custom": custom}
    async with running(extra_routes=routes) as server:
        addr = server.admin_address
        assert (await get(addr, "/metrics", headers={})).json() == {"metric": 1}
        streamed = await get(addr, "/logs", headers={})
        assert streamed.body == b"line 0\nline 1\nline 2\n"
        assert (await get(addr, "/custom", headers={})).status == 202
    with pytest.raises(ValueError, match="healthz"):
        Server(make_config(), extra_routes={"/healthz": metrics})


async def test_observer_gets_one_record_per_answer() -> None:
    records: list[AccessRecord] = []

    class Observer:
        def request(self, record: AccessRecord) -> None:
            records.append(record)

    async with running(observer=Observer()) as server:
        await get(server.vm_address, f"/metadata/instance?api-version={V}")
        await get(server.vm_address, "/metadata/versions", source="127.0.0.9")
        await get(server.vm_address, f"/metadata/instance?api-version={V}", headers={})
    ok, stranger, no_header = records
    assert (ok.status, ok.vm, ok.route, ok.api_version, ok.caller) == \
        (200, VM_A, "/metadata/instance", V, CALLER_A)
    assert ok.bytes > 0
    assert ok.seconds >= 0
    assert ok.refused is None
    assert (stranger.status, stranger.refused, stranger.vm) == (403, "unknown-caller", None)
    assert (no_header.status, no_header.refused) == (400, "no-metadata-header")
    assert len({r.request_id for r in records}) == 3


async def test_statistics_record() -> None:
    async with running(make_config(rate_limit=0.0)) as server:
        for _ in range(3):
            await get(server.vm_address, f"/metadata/instance?api-version={V}")
        stats = server.statistics()
        assert stats.ready
        assert not stats.draining
        assert stats.cache_hits >= 2
        assert stats.cache_misses >= 1
        assert stats.connections_accepted >= 3
        assert stats.requests >= 3



async def test_parked_watcher_disconnect_releases_its_slot() -> None:
    # One watcher slot per VM: a client that goes away while parked must give it back at
    # once (not at its timeout), so the next watcher parks instead of getting 429.
    async with running(make_config(rate_limit=0.0, max_watchers_per_vm=1)) as server:
        target = (f"/metadata/instance/compute/name?api-version={V}&format=text"
                  "&wait_for_change=true&timeout_sec=300")
        from .conftest import connect

        for _ in range(2):
            stream = await connect(server.vm_address)
            await stream.send_all(request_bytes("GET", target, MD, close=False))
            await wait_until(lambda: server.statistics().parked_watchers == 1)
            await stream.aclose()
            await wait_until(lambda: server.statistics().parked_watchers == 0, seconds=5)
        # The slot is free: a watcher now parks and is answered by a change.
        assert server.replica is not None
        replies: list[Any] = []

        async def watch() -> None:
            replies.append(await get(server.vm_address, target))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await wait_until(lambda: server.statistics().parked_watchers == 1)
            await server.replica.submit([Event("fabric", ("vms", VM_A, "compute", "name"),
                                               60, "renamed")])
        assert [(r.status, r.body) for r in replies] == [(200, b"renamed")]


async def test_request_pipelined_behind_a_watch_is_answered_after_it() -> None:
    async with running(make_config(rate_limit=0.0)) as server:
        watch = (f"/metadata/instance/compute/name?api-version={V}&format=text"
                 "&wait_for_change=true&timeout_sec=1")
        plain = f"/metadata/instance/compute/name?api-version={V}&format=text"
        data = (request_bytes("GET", watch, MD, close=False)
                + request_bytes("GET", plain, MD, close=True))
        with trio.fail_after(5):
            replies = await exchange(server.vm_address, data, expect=2)
        assert [(r.status, r.body) for r in replies] == [(200, b"vm-a-name")] * 2


async def test_a_pipelining_client_does_not_starve_another() -> None:
    # Sends do not yield; answers from a buffer full of pipelined requests must still let
    # other connections in (every few answers), not only after the whole pipeline.
    methods: list[str] = []
    all_answered = trio.Event()

    class Order:
        def request(self, record: AccessRecord) -> None:
            methods.append(record.method)
            if len(methods) == 301:
                all_answered.set()

    async with running(make_config(rate_limit=0.0), observer=Order()) as server:
        from .conftest import connect

        other = await connect(server.vm_address, CALLER_B)
        greedy = await connect(server.vm_address)

        async def drain() -> None:
            while await greedy.receive_some(65536):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            await greedy.send_all(request_bytes("HEAD", "/metadata/versions", close=False)
                                  * 300)
            await other.send_all(request_bytes("GET", "/metadata/versions"))
            with trio.fail_after(10):
                await all_answered.wait()
            nursery.cancel_scope.cancel()
        await greedy.aclose()
        await other.aclose()
        assert methods.count("HEAD") == 300
        assert methods.index("GET") < 300  # answered during the pipeline, not after it


# -- finding 11.9: admin ingest refuses the names the server owns --------------------------

def _events_body(*events: dict[str, Any]) -> bytes:
    return json.dumps({"events": list(events)}).encode()


@pytest.mark.parametrize("allowed", [False, True])
async def test_admin_ingest_refuses_the_guest_approval_source_unless_allowed(
        allowed: bool) -> None:
    """The guest-approval source is written by the server alone: an admin batch claiming it
    (say at version 2**63-1) would freeze every later approval of that event."""
    config = make_config(admin_allow_owned_sources=allowed)
    async with running(config) as server:
        forged = {"source": "guest", "version": 2**63 - 1, "value": {"approved": True},
                  "key": ["vms", VM_A, "scheduledevents", EVENT_ID, "approval"]}
        fine = {"source": "tags", "key": ["vms", VM_A, "compute", "tags"], "version": 99,
                "value": "x"}
        reply = await get(server.admin_address, "/events", method="POST",
                          body=_events_body(fine, forged),
                          headers={"Content-Type": "application/json"})
        if allowed:
            assert reply.status == 200
            return
        assert reply.status == 400
        assert reply.json()["index"] == 1
        assert "'guest'" in reply.json()["error"]
        assert "admin-allow-owned-sources" in reply.json()["error"]
        replica = server.replica
        assert replica is not None
        assert replica.view.get(("vms", VM_A, "compute", "tags")).value != "x"  # type: ignore[union-attr]


async def test_checking_a_large_batch_for_owned_sources_lets_the_loop_run() -> None:
    # The check walked a maximum batch (150,000 events) in one go: 10-20 ms of the loop.
    from imds_replica import open_replica
    from imds_server._admin import AdminApi

    events = [Event.from_dict({"source": "tags", "key": ["vms", f"vm{i}", "compute", "x"],
                               "version": 1, "value": i}) for i in range(30_000)]
    async with open_replica() as replica:
        admin = AdminApi(clock=replica.now)
        admin.replica = replica
        async with loop_ticks() as ticks:
            await admin._refuse_owned(events)
            during = ticks()
        # 30,000 events: 7 checkpoints (one every 4,096); the run order within a
        # scheduler pass is random, so the ticker's count may be one off at either end.
        assert during >= 5


async def test_admin_ingest_refuses_the_names_of_sources_the_replica_runs(
        tmp_path: Path) -> None:
    from imds_replica import FileSource, open_replica
    from imds_server._admin import AdminApi

    source = FileSource("drop", tmp_path, interval=3600)
    async with open_replica(sources=[source]) as replica:
        admin = AdminApi(clock=replica.now)
        admin.replica = replica
        body = _events_body({"source": "drop", "key": ["vms", VM_A, "compute", "x"],
                             "version": 2**62, "value": 1})
        reply = await admin.handle(Request("POST", "/events", {}, body))
        assert reply.status == 400
        assert "'drop'" in json.loads(reply.body)["error"]
        assert replica.view.get(("vms", VM_A, "compute", "x")) is None
        admin = AdminApi(clock=replica.now, allow_owned_sources=True)
        admin.replica = replica
        assert (await admin.handle(Request("POST", "/events", {}, body))).status == 200
