"""The dial tone against a live and a dead server, with its own /metrics."""

from __future__ import annotations

import json
import os
import re
import subprocess

import httpx
import pytest
import trio

from . import _http
from .conftest import COMMAND, run_command, stop_process

pytestmark = pytest.mark.integration


async def fake_imds(answers: list[int], seen: list[dict[str, str]]) -> _http.Handler:
    async def handler(request: _http.Request) -> _http.Reply:
        seen.append(request.headers)
        if request.headers.get("metadata") != "true":
            return _http.Reply(400, b'{"error":"Bad request: Required metadata header"}')
        status = answers.pop(0) if answers else 200
        return _http.Reply(status, b'{"compute":{"vmId":"vm-1"}}' if status == 200 else b"{}")
    return handler


async def test_probe_live_server_then_failing_answers() -> None:
    seen: list[dict[str, str]] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_http.serve, await fake_imds([200, 200, 500], seen))
        url = f"http://127.0.0.1:{port}/metadata/instance?api-version=2021-02-01"
        up = await run_command(["probe", url, "--count", "2", "--interval", "0.05", "--json"])
        assert up.returncode == 0, up.stderr
        results = [json.loads(x) for x in up.stdout.decode().splitlines()[:2]]
        assert [r["success"] for r in results] == [True, True]
        assert all(0 < r["seconds"] < 2 for r in results)
        assert "2/2 succeeded, uptime 100.0%" in up.stdout.decode()
        assert all(h.get("metadata") == "true" for h in seen)
        down = await run_command(["probe", url, "--count", "1"])  # the 500
        assert down.returncode == 1
        assert b"DOWN" in down.stdout
        wrong = await run_command(["probe", url, "--count", "1", "--expect", "vmId\":\"vm-2"])
        assert wrong.returncode == 1
        nursery.cancel_scope.cancel()


async def test_probe_dead_server_and_its_metrics() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    dead_url = f"http://127.0.0.1:{dead}/metadata/instance"
    result = await run_command(["probe", dead_url, "--count", "1", "--timeout", "0.5"])
    assert result.returncode == 1
    assert b"DOWN" in result.stdout
    assert b"0/1 succeeded, uptime 0.0%" in result.stdout

    process = await trio.lowlevel.open_process(
        [*COMMAND, "probe", dead_url, "--count", "0", "--interval", "0.1", "--timeout", "0.3",
         "--metrics-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stdout is not None
    try:
        with trio.fail_after(15):
            first = await process.stdout.receive_some(4096)
            metrics_url = re.search(rb"http://[\d.:]+/metrics", first)
            assert metrics_url, first
            async with httpx.AsyncClient() as client:
                while True:
                    body = (await client.get(metrics_url.group().decode())).text
                    if "probe_attempts_total" in body and "probe_success 0.0" in body:
                        break
                    await trio.sleep(0.1)
        assert "probe_duration_seconds" in body
    finally:
        await stop_process(process)
    assert process.returncode == 1  # stopped while down
