"""Hostile guests over real sockets (issue 14): one VM or one stranger never takes the
service from the others. Connection budgets, send timeouts, throttled and aggregated
refusals, hammering after 429, body deadlines, approvals that say what happened, and
watchers woken when their address is re-pointed."""

from __future__ import annotations

import json
import socket
from collections import Counter
from typing import Any

import msgpack
import pytest
import trio

from imds_replica import Event
from imds_server import AccessRecord, Request

from .conftest import (
    CALLER_A,
    CALLER_B,
    EVENT_ID,
    MD,
    VM_A,
    VM_B,
    Reply,
    V,
    connect,
    exchange,
    get,
    make_config,
    request_bytes,
    running,
    wait_until,
)

pytestmark = pytest.mark.integration

INSTANCE = f"/metadata/instance?api-version={V}"
SE = "/metadata/scheduledevents?api-version=2020-07-01"
STRANGERS = [f"127.0.1.{n}" for n in range(1, 9)]


async def _hold(address: tuple[str, int], source: str, count: int) -> list[trio.SocketStream]:
    """Up to ``count`` connections; those refused at accept (reset) are left out."""
    held = []
    for _ in range(count):
        try:
            held.append(await connect(address, source))
        except ConnectionResetError:
            pass
    return held


# -- finding 3: the connection budget ------------------------------------------------------
async def test_strangers_holding_connections_do_not_lock_out_known_vms() -> None:
    config = make_config(max_connections=40, max_unknown_connections=8, rate_limit=0.0)
    async with running(config) as server:
        held: list[trio.SocketStream] = []
        try:
            for source in STRANGERS:  # 8 x 6 = 48 idle connections: more than the total
                held += await _hold(server.vm_address, source, 6)
            await wait_until(lambda: server.statistics().connections_accepted
                             + server.statistics().connections_refused >= 48)
            assert server.statistics().connections_open <= 8
            mine = await _hold(server.vm_address, CALLER_A, 20)  # a known VM: all served
            held += mine
            for stream in mine:
                await stream.send_all(request_bytes("GET", INSTANCE, MD))
            for stream in mine:
                with trio.fail_after(5):
                    assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200")
        finally:
            for stream in held:
                await stream.aclose()


def _time_wait(port: int, peer: str) -> int:
    """Sockets in TIME_WAIT whose local port is ``port`` and whose peer is the address
    ``peer`` (``/proc/net/tcp``, state 06). The peer matters: the kernel may give a new
    server a port an earlier test's server left TIME_WAIT sockets on."""
    peer_hex = socket.inet_aton(peer)[::-1].hex().upper()  # /proc/net/tcp: little-endian
    count = 0
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[3] == "06" and int(fields[1].split(":")[1], 16) == port \
                    and fields[2].split(":")[0] == peer_hex:
                count += 1
    return count


async def test_strangers_refused_at_accept_leave_no_time_wait_behind() -> None:
    # A graceful close by the server is an active close: each refused stranger left a
    # socket in TIME_WAIT for a minute, and a connect flood filled the kernel's table.
    config = make_config(max_unknown_connections=1, unknown_rate_limit=0.0)
    async with running(config) as server:
        held = await _hold(server.vm_address, "127.0.1.1", 1)
        try:
            await wait_until(lambda: server.statistics().unknown_connections_open == 1)
            for _ in range(20):
                try:
                    stream = await connect(server.vm_address, "127.0.1.2")
                except ConnectionResetError:
                    continue
                with trio.fail_after(5):
                    try:
                        assert await stream.receive_some(100) == b""
                    except trio.BrokenResourceError:
                        pass
                await stream.aclose()
            assert server.statistics().unknown_refused == 20
            await trio.sleep(0.2)
            assert _time_wait(server.vm_address[1], "127.0.1.2") == 0
        finally:
            for stream in held:
                await stream.aclose()


async def test_a_stranger_is_closed_after_its_403() -> None:
    async with running() as server:
        twice = request_bytes("GET", INSTANCE, MD, close=False) * 2
        replies = await exchange(server.vm_address, twice, source="127.0.0.9", expect=2)
        assert [r.status for r in replies] == [403]
        assert replies[0].headers["connection"] == "close"


async def test_a_client_that_never_reads_is_closed_after_the_send_timeout() -> None:
    config = make_config(send_timeout=0.5, idle_timeout=30.0, rate_limit=0.0)
    async with running(config) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind((CALLER_A, 0))
        sock.connect(server.vm_address)
        sock.setblocking(False)
        try:
            data = request_bytes("GET", INSTANCE, MD, close=False) * 4000
            sent = 0
            with trio.move_on_after(3):
                while sent < len(data):  # the server answers until its buffer fills
                    await trio.lowlevel.wait_writable(sock)
                    sent += sock.send(data[sent:])
            await wait_until(lambda: server.statistics().connections_accepted == 1)
            with trio.fail_after(10):
                await wait_until(lambda: server.statistics().connections_open == 0)
            assert server.statistics().send_timeouts == 1, server.statistics()
        finally:
            sock.close()


# -- finding 4: strangers are throttled, and their refusals are logged in aggregate ---------
async def test_a_stranger_is_throttled_at_accept() -> None:
    config = make_config(unknown_rate_limit=2.0, unknown_rate_burst=2.0)
    async with running(config) as server:
        statuses: list[int | None] = []
        for _ in range(20):
            try:
                replies = await exchange(server.vm_address,
                                         request_bytes("GET", INSTANCE, MD), source="127.0.0.9")
            except (trio.BrokenResourceError, ConnectionResetError):  # reset at accept
                replies = []
            statuses.append(replies[0].status if replies else None)
        assert 2 <= statuses.count(403) <= 4  # the burst, and what refilled meanwhile
        assert statuses.count(None) >= 16  # closed at accept, unanswered
        assert server.statistics().connections_refused >= 16
        assert (await get(server.vm_address, INSTANCE)).status == 200  # VMs unaffected


class _Recorder:
    def __init__(self) -> None:
        self.records: list[AccessRecord] = []
        self.counted: list[AccessRecord] = []

    def request(self, record: AccessRecord) -> None:
        self.records.append(record)

    def count(self, record: AccessRecord) -> None:
        self.counted.append(record)


async def test_repeated_refusals_are_one_line_per_caller_and_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    recorder = _Recorder()
    config = make_config(unknown_rate_limit=0.0, refusal_log_interval=3.0, rate_limit=1.0,
                         rate_burst=1.0)
    async with running(config, observer=recorder) as server:
        for _ in range(30):
            assert (await get(server.vm_address, INSTANCE, source="127.0.0.9")).status == 403
        statuses = [r.status for r in await exchange(
            server.vm_address, request_bytes("GET", INSTANCE, MD, close=False) * 6,
            source=CALLER_B, expect=6)]
        assert statuses.count(429) >= 4
        with caplog.at_level("INFO", logger="imds_server.refusals"):
            await trio.sleep(3.5)  # the interval ends: the summary is logged
    logged = [(r.caller, r.refused) for r in recorder.records if r.refused]
    assert logged.count(("127.0.0.9", "unknown-caller")) == 1
    assert logged.count((CALLER_B, "rate-limited")) == 1
    # every refusal is still counted (metrics stay exact), only the lines are aggregated
    assert len([r for r in recorder.counted if r.refused == "unknown-caller"]) == 29
    lines = [r.getMessage() for r in caplog.records if r.name == "imds_server.refusals"]
    assert any("127.0.0.9" in line and "29" in line and "unknown-caller" in line
               for line in lines), lines
    assert any(CALLER_B in line and "rate-limited" in line for line in lines), lines
    fields = [getattr(r, "fields", {}) for r in caplog.records
              if r.name == "imds_server.refusals"]
    assert {"caller": "127.0.0.9", "refused": "unknown-caller", "count": 29} in fields


# -- finding 5: a flooding VM gets less of the loop and is closed when it keeps on ----------
async def _hammer(refusals_before_close: int, count: int) -> tuple[list[Reply], int, int]:
    """``count`` pipelined reads on one connection from a VM limited to 5/s: the replies,
    connections closed after refusals, and a neighbour's status after."""
    config = make_config(rate_limit=5.0, refusals_before_close=refusals_before_close)
    async with running(config) as server:
        flood = request_bytes("GET", INSTANCE, MD, close=False) * count
        with trio.fail_after(20):
            replies = await exchange(server.vm_address, flood, source=CALLER_B, expect=count)
        neighbour = (await get(server.vm_address, INSTANCE)).status
        return replies, server.statistics().closed_after_refusals, neighbour


async def test_a_connection_that_keeps_hammering_after_429_is_closed() -> None:
    replies, closed, neighbour = await _hammer(8, 200)
    statuses = [r.status for r in replies]
    assert statuses.count(429) == 8  # asked again within a second of each: closed
    assert statuses[-1] == 429
    assert len(statuses) < 40  # the rest of the flood was never answered
    assert closed == 1
    assert replies[-1].headers["connection"] == "close"
    assert neighbour == 200


async def test_refusals_before_close_zero_never_closes_a_hammering_connection() -> None:
    replies, closed, _ = await _hammer(0, 40)
    statuses = [r.status for r in replies]
    assert len(statuses) == 40  # every request answered on the one connection
    assert statuses.count(429) > 16  # more than the default's limit, and still open
    assert closed == 0
    assert all(r.headers.get("connection") != "close" for r in replies)


class _Passes(trio.abc.Instrument):
    """Counts the scheduler's passes: each ends in one poll for I/O, which is when another
    VM's request is first seen."""

    def __init__(self) -> None:
        self.count = 0

    def before_io_wait(self, timeout: float) -> None:
        self.count += 1


async def test_a_vm_over_its_limit_gets_one_answer_per_scheduler_pass() -> None:
    # 32 flood connections woke from their pauses after 429 in the same pass and were
    # answered all in it: several milliseconds during which no other VM's request was even
    # read. Over its limit, a VM's connections take turns: one answer per pass among them.
    config = make_config(rate_limit=1.0, refusals_before_close=1000)
    async with running(config) as server:
        passes = _Passes()
        handled: list[tuple[int, str, int]] = []  # (pass, caller, status)
        handle = server.api.handle

        def counting(request: Request, caller: str, now: float) -> Any:
            result = handle(request, caller, now)
            handled.append((passes.count, caller, getattr(result, "status", 0)))
            return result

        server.api.handle = counting  # type: ignore[method-assign]
        streams = [await connect(server.vm_address, CALLER_B) for _ in range(8)]
        flood = request_bytes("GET", INSTANCE, MD, close=False) * 40

        async def drain(stream: trio.SocketStream) -> None:
            while await stream.receive_some(65536):
                pass

        trio.lowlevel.add_instrument(passes)
        try:
            async with trio.open_nursery() as nursery:
                for stream in streams:
                    nursery.start_soon(drain, stream)
                    await stream.send_all(flood)
                await wait_until(lambda: len(handled) >= 60)
                reply = await get(server.vm_address, INSTANCE)  # the neighbour meanwhile
                nursery.cancel_scope.cancel()
        finally:
            trio.lowlevel.remove_instrument(passes)
            for stream in streams:
                await stream.aclose()
        assert reply.status == 200
        first = next(n for n, caller, status in handled if status == 429)
        per_pass = Counter(n for n, caller, _ in handled if caller == CALLER_B and n > first)
        assert sum(per_pass.values()) >= 40
        assert max(per_pass.values()) == 1, sorted(per_pass.values())[-5:]


# -- finding 11: an admin body has its own deadline ------------------------------------------
async def test_a_slow_admin_upload_is_not_cut_at_the_header_timeout() -> None:
    config = make_config(header_timeout=0.5, admin_body_timeout=30.0)
    async with running(config) as server:
        events = [{"source": "tags", "key": ["bulk", str(i)], "version": 1, "value": "x" * 50}
                  for i in range(1500)]
        body = json.dumps({"events": events}).encode()
        head = request_bytes("POST", "/events", {"Content-Type": "application/json"}, body)
        head = head[:len(head) - len(body)]
        stream = await connect(server.admin_address, "127.0.0.1")
        async with stream:
            await stream.send_all(head)
            step = len(body) // 10
            for i in range(0, len(body), step):  # ~1.2 s in all: past the header timeout
                await stream.send_all(body[i:i + step])
                await trio.sleep(0.12)
            with trio.fail_after(10):
                reply = await stream.receive_some(65536)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]


# -- finding 8: admin errors are counted --------------------------------------------------------
async def test_an_admin_internal_error_is_counted() -> None:
    async def broken(request: Request) -> bytes:
        raise RuntimeError("a bug")

    async with running(extra_routes={"/broken": broken}) as server:
        reply = await get(server.admin_address, "/broken", headers={})
        assert reply.status == 500
        assert server.statistics().internal_errors == 1


# -- finding 9: an approval answers what happened ---------------------------------------------
async def test_an_approval_that_does_not_take_effect_is_not_200() -> None:
    async with running() as server:
        assert server.replica is not None
        # An operator record under the guest-approval source, at a version far ahead.
        await server.replica.submit([Event("guest", ("vms", VM_A, "approvals", EVENT_ID),
                                           2**62, {"EventId": EVENT_ID, "approved": False})])
        body = json.dumps({"StartRequests": [{"EventId": EVENT_ID}]}).encode()
        reply = await get(server.vm_address, SE, method="POST", body=body)
        assert reply.status == 409
        assert EVENT_ID in reply.json()["error"]


async def test_an_approval_that_takes_effect_is_200() -> None:
    async with running() as server:
        body = json.dumps({"StartRequests": [{"EventId": EVENT_ID}]}).encode()
        assert (await get(server.vm_address, SE, method="POST", body=body)).status == 200


# -- finding 10: re-pointing a caller wakes its parked watchers ---------------------------------
async def test_repointing_a_caller_wakes_its_watchers() -> None:
    async with running() as server:
        assert server.replica is not None
        replica = server.replica
        result: list[int] = []

        async def watch() -> None:
            reply = await get(server.vm_address, f"{INSTANCE}&wait_for_change=true"
                                                 "&timeout_sec=60")
            result.append(reply.status)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await wait_until(lambda: server.api.parked == 1)
            await replica.submit([Event("hostnet", ("callers", CALLER_A), 2, VM_B)])
            with trio.fail_after(5):
                await wait_until(lambda: bool(result))
        assert result == [403]


# -- finding 8: odd admin bodies get 400, never 500 --------------------------------------------
@pytest.mark.parametrize(("body", "kind", "reason"), [
    (b"[" * 1000 + b"]" * 1000, "application/json", '{"events": [...]}'),
    (b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b', "events": []}', "application/json",
     "nested"),
    (b'{"events": [' + b"[" * 5000 + b"]" * 5000 + b"]}", "application/json", "nested"),
    (msgpack.packb({"events": []})[:-1] + b"\x81\x91\x01\x02", "application/msgpack", ""),
    (b"\x81\x91\x01\x02", "application/msgpack", ""),  # a map whose key is an array
    (msgpack.packb({"events": [{"source": "tags", "key": ["a"], "version": 1,
                                "value": {"x": 1}}], (1, 2): 3}, use_bin_type=True),
     "application/msgpack", ""),
    (b'{"events": [{"source": "tags", "key": [["nested"]], "version": 1, "value": 1}]}',
     "application/json", "key"),
    (b'{"events": [{"source": "tags", "key": ["a"], "version": 1e400, "value": 1}]}',
     "application/json", "version"),
    (b'{"events": [{"source": "tags", "key": ["a"], "version": 1, "value": ' + b"[" * 3000
     + b"]" * 3000 + b"}]}", "application/json", "nested"),
])
async def test_odd_admin_bodies_get_400_with_a_reason(body: bytes, kind: str, reason: str,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    async with running() as server:
        reply = await get(server.admin_address, "/events", method="POST", body=body,
                          headers={"Content-Type": kind})
        assert reply.status == 400, reply.body
        assert reason in reply.json()["error"]
        assert server.statistics().internal_errors == 0
    assert "Traceback" not in capsys.readouterr().err


def _unused(*_: Any) -> None:
    pass


_unused(VM_A, CALLER_A)
