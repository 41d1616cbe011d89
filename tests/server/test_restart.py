"""Real processes: systemd-style socket activation, graceful SIGTERM, and no failed request
across restarts (the sockets stay open in this test process, as the service manager keeps
them; connections made while no server runs wait in the kernel's queue)."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from .._serve import listening_socket as _listening
from .._serve import spawn_server as _spawn
from .conftest import get, wait_until

pytestmark = pytest.mark.integration

V = "2021-02-01"
MD = {"Metadata": "true"}


async def _health(admin: tuple[str, int]) -> dict[str, Any]:
    with trio.fail_after(20):
        reply = await get(admin, "/healthz", headers={}, source="127.0.0.1")
    return reply.json()  # type: ignore[no-any-return]


async def _pid(admin: tuple[str, int]) -> int:
    return int((await _health(admin))["pid"])


async def _wait_parked(admin: tuple[str, int], count: int) -> None:
    """Until the server process has ``count`` parked watchers (polled: no event crosses
    processes)."""
    for _ in range(400):
        if (await _health(admin))["parked_watchers"] == count:
            return
        await trio.sleep(0.05)
    raise AssertionError(f"never {count} parked watchers")


async def test_restarts_under_load_fail_no_request(tmp_path: Path) -> None:
    vm, admin = _listening(), _listening()
    vm_addr, admin_addr = vm.getsockname(), admin.getsockname()
    outcomes: list[int | str] = []
    stop = trio.Event()

    async def client() -> None:
        while not stop.is_set():
            try:
                with trio.fail_after(20):
                    reply = await get(vm_addr, f"/metadata/instance/compute/name?api-version={V}"
                                      "&format=text", source="127.0.0.1")
                outcomes.append(reply.status)
            except Exception as exc:  # any failure is what this test counts
                outcomes.append(repr(exc))

    async def answered_by_this_process(count: int) -> None:
        # Under load: the clients have had ``count`` answers since the last (re)start.
        start = len(outcomes)
        await wait_until(lambda: len(outcomes) >= start + count, seconds=60)

    pids = []
    proc = await _spawn(vm, admin, tmp_path / "data")
    try:
        pids.append(await _pid(admin_addr))
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(client)
            for _ in range(3):
                await answered_by_this_process(8)
                proc.send_signal(signal.SIGTERM)
                with trio.fail_after(20):
                    assert await proc.wait() == 0
                proc = await _spawn(vm, admin, tmp_path / "data")
                pids.append(await _pid(admin_addr))
            await answered_by_this_process(8)
            stop.set()
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await proc.wait()
        vm.close()
        admin.close()
    assert len(set(pids)) == 4, pids
    failures = [o for o in outcomes if o != 200]
    assert not failures, failures[:5]
    assert len(outcomes) > 20


async def test_sigterm_answers_in_flight_watcher_and_exits(tmp_path: Path) -> None:
    vm, admin = _listening(), _listening()
    proc = await _spawn(vm, admin, tmp_path / "data")
    try:
        await _pid(admin.getsockname())
        replies = []

        async def watch() -> None:
            replies.append(await get(vm.getsockname(), f"/metadata/instance?api-version={V}"
                                     "&wait_for_change=true&timeout_sec=120",
                                     source="127.0.0.1"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            # SIGTERM only once the watcher is parked (in flight, not in the kernel's queue).
            await _wait_parked(admin.getsockname(), 1)
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                assert await proc.wait() == 0
        assert replies[0].status == 200
        assert replies[0].json()["compute"]["name"] == "demo-vm-1"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        vm.close()
        admin.close()


async def test_bad_config_refused_at_start_with_key(tmp_path: Path) -> None:
    config = tmp_path / "imds.toml"
    config.write_text('rate-limit = "fast"\n')
    result = await trio.run_process([sys.executable, "-m", "imds_server", "serve", "--config",
                                     str(config)], capture_stderr=True, check=False)
    assert result.returncode == 2
    assert b"rate-limit" in result.stderr
    assert b"must be" in result.stderr
    same = await trio.run_process([sys.executable, "-m", "imds_server", "serve", "--listen",
                                   "169.254.169.254:80", "--admin-listen",
                                   "169.254.169.254:81"], capture_stderr=True, check=False)
    assert same.returncode == 2
    assert b"admin-listen" in same.stderr


async def _ready(admin: tuple[str, int], target: str, **options: Any) -> Any:
    """The first answer to ``target`` that is not 503 (the server replays its log first)."""
    for _ in range(400):
        reply = await get(admin, target, source="127.0.0.1", **options)
        if reply.status != 503:
            return reply
        await trio.sleep(0.05)
    raise AssertionError(f"{target}: still starting")


async def test_a_source_posted_without_a_cursor_keeps_its_contact_across_a_restart(
        tmp_path: Path) -> None:
    """Before: ``tags`` posted through ``POST /events`` (counter versions, no cursor) was
    ``unknown`` after a restart: its contact was only persisted with a cursor."""
    vm, admin = _listening(), _listening()
    addr = admin.getsockname()
    body = json.dumps({"events": [{"source": "tags", "key": ["vms", "demo-vm-1", "compute",
                                                             "tags"],
                                   "version": 3, "value": "owner:core"}]}).encode()
    proc = await _spawn(vm, admin, tmp_path / "data")
    try:
        await _pid(addr)
        reply = await _ready(addr, "/events", method="POST", body=body,
                             headers={"Content-Type": "application/json"})
        assert reply.status == 200, reply.body
        before = (await get(addr, "/sources", headers={}, source="127.0.0.1")).json()["tags"]
        assert before["state"] == "live"
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await proc.wait() == 0
        proc = await _spawn(vm, admin, tmp_path / "data")
        await _pid(addr)
        after = (await _ready(addr, "/sources", headers={})).json()["tags"]
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await proc.wait()
        vm.close()
        admin.close()
    assert after["newest_version"] == 3
    assert after["state"] == "live", after
    assert after["last_contact"] == pytest.approx(before["last_contact"], abs=1.0)
