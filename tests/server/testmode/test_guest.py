"""A guest client against a real ``imds-server serve --test-mode`` process: through a 410
window and a dropped connection (a cloud-init-like retry loop), through a scheduled reboot
(an Azure scheduled-events handler), and the operator commands that drive it."""

from __future__ import annotations

import email.utils
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import tenacity
import trio

pytestmark = pytest.mark.integration

V = "2021-02-01"
SE = "2020-07-01"
MD = {"Metadata": "true"}
VM = "vm-guest"
CALLER = "127.0.0.1"


def fleet(**extra: Any) -> dict[str, Any]:
    return {"vms": {VM: {"callers": [CALLER],
                         "compute": {"name": "guest-1", "vmSize": "Standard_D2s_v5"},
                         "network": {"interface": []}}}, **extra}


@asynccontextmanager
async def mode_server(tmp_path: Path, data: dict[str, Any], *args: str
                      ) -> AsyncIterator[tuple[str, str]]:
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(data))
    cmd = [sys.executable, "-m", "imds_server", "serve", "--test-mode", "--fleet", str(path),
           "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--rate-limit", "0",
           *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await trio.lowlevel.open_process(cmd, stderr=-1, env=env)
    assert proc.stderr is not None
    seen = b""
    try:
        with trio.fail_after(30):
            while b"serving VMs on" not in seen:
                chunk = await proc.stderr.receive_some(4096)
                assert chunk, seen.decode()
                seen += chunk
        match = re.search(rb"serving VMs on (\S+), admin on (\S+) \(test mode\)", seen)
        assert match is not None, seen
        yield f"http://{match.group(1).decode()}", f"http://{match.group(2).decode()}"
    finally:
        proc.terminate()
        with trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


class CloudInitLikeGuest:
    """cloud-init's Azure IMDS fetch, reduced to its retry policy: retry connection errors,
    404 (host agent updating), 410, 429 and 5xx every ``wait`` seconds, at most ``attempts``
    times; give up on anything else."""

    RETRIED = frozenset({404, 410, 429, 500, 502, 503, 504})

    def __init__(self, base: str, *, attempts: int = 40, wait: float = 0.25) -> None:
        self.base, self.attempts, self.wait = base, attempts, wait
        self.outcomes: list[str] = []  # "410", "200", "ConnectError", ...

    async def fetch(self, path: str) -> httpx.Response:
        async def once() -> httpx.Response:
            # A new connection per attempt, as cloud-init's readurl does.
            async with httpx.AsyncClient(base_url=self.base, timeout=5) as client:
                try:
                    response = await client.get(path, headers=MD)
                except httpx.TransportError as exc:
                    self.outcomes.append(type(exc).__name__)
                    raise
            self.outcomes.append(str(response.status_code))
            if response.status_code in self.RETRIED:
                raise _Retry(response)
            return response

        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_fixed(self.wait), sleep=trio.sleep, reraise=True,
            retry=tenacity.retry_if_exception_type((_Retry, httpx.TransportError)))
        result: httpx.Response = await retrying(once)
        return result


class _Retry(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


async def test_cloud_init_like_guest_rides_out_a_dropped_connection_and_a_410_window(
        tmp_path: Path) -> None:
    # A host upgrade as a replayable scenario: one dropped connection, then 410 for 2 s.
    scenario = [{"at": 0, "fault": {"path": "/metadata/instance*", "drop": True, "count": 1}},
                {"at": 0, "fault": {"path": "/metadata/instance*", "status": 410,
                                    "retry-after": 1, "duration": 2}}]
    async with mode_server(tmp_path, fleet()) as (vm_url, admin):
        for run in (1, 2):  # replayed: the guest meets the same upgrade twice
            async with httpx.AsyncClient() as client:
                started = await client.post(f"{admin}/testmode/scenario",
                                            json={"steps": scenario})
            assert started.json() == {"started": 2, "run": run}
            t0 = time.monotonic()
            guest = CloudInitLikeGuest(vm_url)
            response = await guest.fetch(f"/metadata/instance?api-version={V}")
            elapsed = time.monotonic() - t0
            assert response.status_code == 200
            assert response.json()["compute"]["name"] == "guest-1"
            assert response.headers["imds-test-mode"] == "on"
            # The 410 rule is the newest, so it answers first; the drop fires once it ends.
            statuses = guest.outcomes
            assert statuses[0] == "410", statuses
            assert statuses[-1] == "200", statuses
            assert "RemoteProtocolError" in statuses or "ReadError" in statuses, statuses
            assert statuses.count("410") >= 3, statuses  # 2 s at one try every 0.25 s
            assert elapsed >= 1.5  # it waited the window out instead of failing in it
            assert len(statuses) < guest.attempts  # and within its retry budget


async def test_forced_answers_say_test_mode_and_carry_retry_after(tmp_path: Path) -> None:
    async with mode_server(tmp_path, fleet()) as (vm_url, admin), httpx.AsyncClient() as client:
        added = await client.post(f"{admin}/testmode/faults", json={"faults": [
            {"path": "/metadata/instance", "status": 503, "retry-after": 4, "count": 1},
            {"path": "/metadata/versions", "delay": 0.3, "count": 1}]})
        assert added.status_code == 200, added.text
        listed = await client.get(f"{admin}/testmode/faults")
        assert [f["id"] for f in listed.json()["faults"]] == added.json()["ids"]
        assert listed.headers["imds-test-mode"] == "on"
        forced = await client.get(f"{vm_url}/metadata/instance?api-version={V}",
                                  headers=MD)
        assert (forced.status_code, forced.headers["retry-after"]) == (503, "4")
        assert forced.headers["imds-test-mode"] == "on; fault=503"
        again = await client.get(f"{vm_url}/metadata/instance?api-version={V}",
                                 headers=MD)
        assert again.status_code == 200  # count = 1: used up
        t0 = time.monotonic()
        slow = await client.get(f"{vm_url}/metadata/versions")
        assert slow.status_code == 200
        assert time.monotonic() - t0 >= 0.3
        refused = await client.post(f"{admin}/testmode/faults", json={"status": 302})
        assert refused.status_code == 400
        assert "fault status must be one of" in refused.json()["error"]


async def scheduled(client: httpx.AsyncClient, vm_url: str, etag: str | None = None
                    ) -> httpx.Response:
    params = {"api-version": SE}
    if etag:
        params.update(wait_for_change="true", last_etag=etag, timeout_sec="20")
    return await client.get(f"{vm_url}/metadata/scheduledevents", params=params, headers=MD)


async def test_scheduled_reboot_runs_its_lifecycle_for_an_approving_guest(
        tmp_path: Path) -> None:
    plan = {"id": "R1", "type": "Reboot", "resources": ["guest-1"], "duration": 600}
    data = fleet()
    data["vms"][VM]["scheduledevents"] = [plan]
    # 900 s of notice and 600 s of duration, 300 times faster: 3 s and 2 s.
    async with mode_server(tmp_path, data, "--time-scale", "300") as (vm_url, _admin), \
            httpx.AsyncClient(timeout=30) as client:
        seen: list[tuple[int, str]] = []  # (DocumentIncarnation, status or "gone")
        first = await scheduled(client, vm_url)
        body = first.json()
        [event] = body["Events"]
        assert (event["EventId"], event["EventStatus"]) == ("R1", "Scheduled")
        not_before = email.utils.parsedate_to_datetime(event["NotBefore"]).timestamp()
        assert 1 < not_before - time.time() <= 3.5
        seen.append((body["DocumentIncarnation"], "Scheduled"))
        # The handler approves at once, as Azure's sample handler does before a reboot.
        approve = await client.post(f"{vm_url}/metadata/scheduledevents",
                                    params={"api-version": SE}, headers=MD,
                                    json={"StartRequests": [{"EventId": "R1"}]})
        assert approve.status_code == 200
        etag = first.headers["etag"].strip('"')
        while seen[-1][1] != "gone":
            answer = await scheduled(client, vm_url, etag)
            etag = answer.headers["etag"].strip('"')
            body = answer.json()
            status = body["Events"][0]["EventStatus"] if body["Events"] else "gone"
            if status != seen[-1][1]:
                seen.append((body["DocumentIncarnation"], status))
                if status == "Started":
                    assert body["Events"][0]["NotBefore"] == ""
                    # Approved: it started before its NotBefore.
                    assert time.time() < not_before
    assert [s for _, s in seen] == ["Scheduled", "Started", "gone"]
    incarnations = [i for i, _ in seen]
    assert incarnations == sorted(incarnations)
    assert len(set(incarnations)) == 3  # each step raised DocumentIncarnation


async def test_put_and_events_commands_drive_the_server(tmp_path: Path) -> None:
    async with mode_server(tmp_path, fleet(), "--time-scale", "100") as (vm_url, admin):
        async def command(*args: str) -> trio.CompletedProcess[bytes]:
            return await trio.run_process(
                [sys.executable, "-m", "imds_server", *args, "--admin", admin],
                capture_stdout=True, capture_stderr=True, check=False)

        put = await command("put", VM, "compute.name=renamed", "compute.zone=3",
                            "--delete", "compute.vmSize")
        assert put.returncode == 0, put.stderr
        added = await command("events", "add", VM, "--id", "F1", "--type", "Freeze",
                              "--not-before-in", "6000", "--duration", "5")
        assert added.returncode == 0, added.stderr
        listed = await command("events", "list", VM)
        assert b"F1  Freeze  Scheduled" in listed.stdout
        before = listed.stdout.decode().split("NotBefore=")[1].split("  ")[0]
        moved = await command("events", "postpone", VM, "F1", "100")  # 1 s at scale 100
        assert moved.returncode == 0, moved.stderr
        with trio.fail_after(10):  # the lifecycle republishes on its next step
            after = before
            while after == before:
                listing = (await command("events", "list", VM)).stdout.decode()
                after = listing.split("NotBefore=")[1].split("  ")[0]
        moved_by = email.utils.parsedate_to_datetime(after) - \
            email.utils.parsedate_to_datetime(before)
        assert moved_by.total_seconds() == 1  # 100 planned seconds at scale 100
        removed = await command("events", "remove", VM, "F1")
        assert removed.returncode == 0, removed.stderr
        added = await command("events", "add", VM, "--id", "F2", "--type", "Freeze",
                              "--not-before-in", "100", "--duration", "5")
        assert added.returncode == 0, added.stderr
        mapped = await command("put", "vm-new", "compute.name=fresh", "--caller", "127.0.0.9")
        assert mapped.returncode == 0, mapped.stderr
        bad = await command("put", VM, "novalue")
        assert bad.returncode == 2
        assert b"is not PATH=VALUE" in bad.stderr
        async with httpx.AsyncClient() as client:
            doc = (await client.get(f"{vm_url}/metadata/instance?api-version={V}",
                                    headers=MD)).json()["compute"]
            assert (doc["name"], doc["zone"], doc["vmSize"]) == ("renamed", "3", "")
            assert doc["vmId"] == VM  # from the key: the fleet did not publish one
            with trio.fail_after(15):  # 600 s / 100 to start, 5 s / 100 to go
                answer = await scheduled(client, vm_url)
                while answer.json()["Events"]:  # watch (no polling) until it is gone
                    answer = await scheduled(client, vm_url, answer.headers["etag"].strip('"'))


async def test_test_mode_is_refused_on_the_production_address(tmp_path: Path) -> None:
    done = await trio.run_process(
        [sys.executable, "-m", "imds_server", "serve", "--test-mode",
         "--listen", "169.254.169.254:80"], capture_stderr=True, check=False)
    assert done.returncode == 2
    assert b"test mode refuses to serve on 169.254.169.254:80" in done.stderr
    assert b"--allow-production-address" in done.stderr
