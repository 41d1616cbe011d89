"""``GET /logs?grep=``: a guest-planted line and a backtracking pattern (issue 14, finding 2).

With a backtracking engine, ``(a+)+$`` over a line of 24 ``a`` and one ``!`` takes about
2^24 steps (seconds, doubling per character), holding the GIL: every listener of the
process stops. The search must be linear-time, and a client that hangs up must stop it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import trio

from imds_replica import ClientError
from imds_server.telemetry import LogFilter, read_lines
from imds_server.telemetry._admin import stream_lines

from .._serve import listening_socket, spawn_server
from ..server.conftest import connect, get
from .conftest import stop_process

pytestmark = pytest.mark.integration

INSTANCE = "/metadata/instance?api-version=2021-02-01"
PLANTED = "a" * 24 + "!"
EVIL = "(a+)+$"


def test_backtracking_pattern_is_linear_time() -> None:
    flt = LogFilter.from_query({"grep": EVIL})
    started = time.perf_counter()
    assert not flt.matches(f'{{"message":"{PLANTED}"}}\n')
    assert time.perf_counter() - started < 0.5  # the backtracking engine: minutes


def test_patterns_re2_cannot_run_linearly_are_refused_clearly() -> None:
    with pytest.raises(ClientError, match="grep: bad regular expression"):
        LogFilter.from_query({"grep": r"(a)\1"})  # a backreference


async def test_vm_reads_keep_answering_during_a_pathological_grep(tmp_path: Path) -> None:
    data = tmp_path / "data"
    logs = tmp_path / "data.logs"
    logs.mkdir()
    (logs / "imds.log").write_text(
        "".join(f'{{"time":"2026-01-01T00:00:00Z","message":"{PLANTED}"}}\n'
                for _ in range(200)))
    vm, admin = listening_socket(), listening_socket()
    vm_addr, admin_addr = vm.getsockname(), admin.getsockname()
    process = await spawn_server(vm, admin, data)
    try:
        with trio.fail_after(60):
            for _ in range(1000):  # readiness is in another process: polled
                if (await get(admin_addr, "/healthz", headers={}, source="127.0.0.1")
                        ).status == 200:
                    break
                await trio.sleep(0.05)
        slowest = 0.0

        async def grep() -> None:
            reply = await get(admin_addr, f"/logs?grep={EVIL}", headers={},
                              source="127.0.0.1")
            assert (reply.status, reply.body) == (200, b"")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(grep)
            for _ in range(20):
                started = trio.current_time()
                with trio.fail_after(10):
                    assert (await get(vm_addr, INSTANCE, source="127.0.0.1")).status == 200
                slowest = max(slowest, trio.current_time() - started)
                await trio.sleep(0.02)
        assert slowest < 2.0, f"a VM read took {slowest:.2f} s during the grep"
    finally:
        await stop_process(process)
        vm.close()
        admin.close()


async def test_a_hung_up_client_stops_the_search(tmp_path: Path) -> None:
    (tmp_path / "imds.log").write_text("no match here\n" * 1_500_000)
    flt = LogFilter.from_query({"grep": "never-there"})
    started = time.perf_counter()
    assert list(read_lines(tmp_path, flt)) == []
    whole = time.perf_counter() - started  # one search of the whole file, for scale
    stream = stream_lines(tmp_path, flt)
    started = time.perf_counter()
    with trio.move_on_after(0.01):
        await stream.__anext__()  # the search runs in a worker thread; the client leaves
    await stream.aclose()
    # The worker sees the stop within a few hundred lines, not at the end of the file.
    for _ in range(10_000):  # a worker thread: no event to wait on
        if not any(t.name.startswith("imds-grep") for t in threading.enumerate()):
            break
        await trio.sleep(0.005)
    stopped = time.perf_counter() - started
    assert stopped < whole / 3, f"stopped after {stopped:.2f} s; a whole search: {whole:.2f} s"


async def test_a_client_that_hangs_up_mid_stream_cancels_the_stream() -> None:
    from imds_server import Request

    from ..server.conftest import running

    ended = trio.Event()

    async def endless() -> object:
        async def chunks():  # type: ignore[no-untyped-def]
            try:
                await trio.sleep_forever()  # a search that finds nothing, for ever
                yield b""
            finally:
                ended.set()
        return chunks()

    async def route(request: Request) -> object:
        return await endless()

    async with running(extra_routes={"/slow": route}) as server:  # type: ignore[dict-item]
        stream = await connect(server.admin_address, "127.0.0.1")
        await stream.send_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await stream.receive_some(4096)  # the head of the chunked answer
        await stream.aclose()
        with trio.fail_after(5):
            await ended.wait()
