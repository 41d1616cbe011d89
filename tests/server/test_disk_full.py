"""Issue 14.1 end to end: a real server process on a real, small file system that fills up.
Reads never fail; writes get 503 + Retry-After while the disk is full and are taken again
once space is back; /healthz and /metrics say so; nothing acknowledged is lost after a
restart."""

from __future__ import annotations

import errno
import json
import signal
from pathlib import Path

import pytest
import trio

from .._serve import listening_socket, spawn_server
from .._tools import small_tmpfs
from .conftest import get, wait_until

pytestmark = pytest.mark.integration

V = "2021-02-01"


def _batch(n: int) -> bytes:
    events = [{"source": "agent", "key": ["vms", "disk-full", "compute", f"f{n}-{i}"],
               "version": n * 100 + i, "value": {"n": n, "pad": "x" * 4000}} for i in range(4)]
    return json.dumps({"events": events}).encode()


async def _post(admin: tuple[str, int], n: int) -> tuple[int, dict[str, str]]:
    reply = await get(admin, "/events", method="POST", body=_batch(n), source="127.0.0.1",
                      headers={"Content-Type": "application/json"})
    return reply.status, dict(reply.headers)


def _fill(path: Path) -> None:
    """Write until the file system has no byte left."""
    with open(path, "wb", buffering=0) as f:
        chunk = b"\0" * 65536
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return
                chunk = chunk[: len(chunk) // 2]


async def test_disk_full_refuses_writes_serves_reads_and_recovers(tmp_path: Path) -> None:
    vm, admin = listening_socket(), listening_socket()
    vm_addr, admin_addr = vm.getsockname(), admin.getsockname()
    with small_tmpfs(tmp_path / "mnt", "4m") as mount:
        data = mount / "data"
        proc = await spawn_server(vm, admin, data)
        reads: list[int | str] = []
        acked: list[int] = []
        try:
            with trio.fail_after(30):
                while True:
                    try:
                        if (await get(admin_addr, "/healthz", headers={},
                                      source="127.0.0.1")).status == 200:
                            break
                    except OSError:
                        pass
                    await trio.sleep(0.05)
            for n in range(5):
                assert (await _post(admin_addr, n))[0] == 200
                acked.append(n)
            stop = trio.Event()

            async def reader() -> None:
                while not stop.is_set():
                    try:
                        with trio.fail_after(10):
                            reply = await get(vm_addr, f"/metadata/instance/compute/name"
                                              f"?api-version={V}&format=text",
                                              source="127.0.0.1")
                        reads.append(reply.status)
                    except Exception as exc:  # any failure is what this test counts
                        reads.append(repr(exc))

            async with trio.open_nursery() as nursery:
                for _ in range(2):
                    nursery.start_soon(reader)
                filler = mount / "filler"
                await trio.to_thread.run_sync(_fill, filler)
                refused = 0
                for n in range(100, 110):
                    status, headers = await _post(admin_addr, n)
                    if status == 200:  # a write that still fit in a page already there
                        acked.append(n)
                        continue
                    assert status == 503, status
                    assert int(headers["retry-after"]) > 0
                    refused += 1
                assert refused >= 5
                health = (await get(admin_addr, "/healthz", headers={},
                                    source="127.0.0.1")).json()
                assert health["status"] == "degraded", health
                assert health["log"]["writable"] is False
                assert health["log"]["state"] == "full"
                metrics = (await get(admin_addr, "/metrics", headers={},
                                     source="127.0.0.1")).body.decode()
                assert "imds_log_writable 0.0" in metrics
                assert 'imds_log_state{state="full"} 1.0' in metrics
                await wait_until(lambda: len(reads) > 50, seconds=30)
                filler.unlink()  # space is back: writes are taken again, by themselves
                n = 200
                for _ in range(100):
                    if (await _post(admin_addr, n))[0] == 200:
                        break
                    await trio.sleep(0.2)
                else:
                    raise AssertionError("writes never taken again after space came back")
                acked.append(n)
                for n in range(201, 205):
                    assert (await _post(admin_addr, n))[0] == 200
                    acked.append(n)
                health = (await get(admin_addr, "/healthz", headers={},
                                    source="127.0.0.1")).json()
                assert health["status"] == "ok"
                assert health["log"]["writable"] is True
                stop.set()
            failures = [r for r in reads if r != 200]
            assert not failures, failures[:5]
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                assert await proc.wait() == 0
            proc = await spawn_server(vm, admin, data)
            with trio.fail_after(30):
                while True:
                    try:
                        reply = await get(admin_addr, "/view?prefix=vms/disk-full", headers={},
                                          source="127.0.0.1")
                        if reply.status == 200:
                            break
                    except OSError:
                        pass
                    await trio.sleep(0.05)
            keys = {"/".join(r["key"]) for r in reply.json()["registers"]}
            for n in acked:
                for i in range(4):
                    assert f"vms/disk-full/compute/f{n}-{i}" in keys, (n, i)
        finally:
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                await proc.wait()
            vm.close()
            admin.close()
