"""deploy/alertmanager: amtool checks the config and its routes; a real Alertmanager
(Debian's ``prometheus-alertmanager``) on loopback groups and inhibits posted alerts."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests._tools import require_tool

ALERTMANAGER = Path(__file__).resolve().parents[2] / "deploy" / "alertmanager"
CONFIG = ALERTMANAGER / "alertmanager.yml"
pytestmark = pytest.mark.integration


async def amtool(*args: str) -> subprocess.CompletedProcess[bytes]:
    tool = require_tool("amtool", "prometheus-alertmanager")
    with trio.fail_after(60):
        return await trio.run_process([tool, *args], capture_stdout=True,
                                      capture_stderr=True, check=False)


async def test_config_is_valid() -> None:
    result = await amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b"1 templates" in result.stdout


@pytest.mark.parametrize(("labels", "receiver"), [
    (["alertname=ImdsErrorRatioHigh", "cluster=c1", "severity=critical"], "pager"),
    (["alertname=ImdsDialToneBudgetBurn", "cluster=c1", "severity=critical"], "pager"),
    (["alertname=ImdsLatencyP90High", "cluster=c1", "severity=warning"], "tickets"),
    (["alertname=Unknown", "cluster=c1"], "tickets"),
])
async def test_routes(labels: list[str], receiver: str) -> None:
    result = await amtool("config", "routes", "test", f"--config.file={CONFIG}",
                          f"--verify.receivers={receiver}", *labels)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    wrong = "tickets" if receiver == "pager" else "pager"
    result = await amtool("config", "routes", "test", f"--config.file={CONFIG}",
                          f"--verify.receivers={wrong}", *labels)
    assert result.returncode != 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _alert(name: str, severity: str, **labels: str) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    return {"labels": {"alertname": name, "severity": severity, **labels},
            "annotations": {"summary": name},
            "startsAt": (now - dt.timedelta(minutes=1)).isoformat(),
            "endsAt": (now + dt.timedelta(hours=1)).isoformat()}


async def test_dial_tone_failure_inhibits_the_clusters_latency_and_error_alerts(
        tmp_path: Path) -> None:
    binary = require_tool("prometheus-alertmanager", "prometheus-alertmanager")
    config = tmp_path / "am"
    shutil.copytree(ALERTMANAGER, config)  # templates resolve next to the config
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api/v2"
    process = await trio.lowlevel.open_process(
        [binary, f"--config.file={config / 'alertmanager.yml'}",
         f"--storage.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--cluster.listen-address="], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            for _ in range(300):
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/-/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await trio.sleep(0.1)
            else:
                pytest.fail("alertmanager did not become ready")
            posted = await client.post(f"{url}/alerts", json=[
                _alert("ImdsDialToneFailing", "critical", cluster="c1", machine="m1"),
                _alert("ImdsLatencyP90High", "warning", cluster="c1"),
                _alert("ImdsErrorRatioHigh", "critical", cluster="c1"),
                _alert("ImdsLatencyP90High", "warning", cluster="c2"),
                _alert("ImdsSourceStale", "warning", cluster="c1", machine="m1", source="t"),
            ])
            assert posted.status_code == 200, posted.text
            # Alertmanager inhibits and groups asynchronously (its inhibitor and dispatcher
            # follow the alert store from their own goroutines), so a read straight after
            # the post can predate both: wait until they have caught up, then assert.
            for _ in range(300):
                alerts = (await client.get(f"{url}/alerts")).json()
                groups = (await client.get(f"{url}/alerts/groups")).json()
                if len(groups) == 5 and sum(
                        a["status"]["state"] == "suppressed" for a in alerts) >= 2:
                    break
                await trio.sleep(0.1)
    finally:
        process.kill()
        await process.wait()
    state = {(a["labels"]["alertname"], a["labels"]["cluster"]): a["status"] for a in alerts}
    assert state[("ImdsLatencyP90High", "c1")]["state"] == "suppressed"
    assert state[("ImdsLatencyP90High", "c1")]["inhibitedBy"]
    assert state[("ImdsErrorRatioHigh", "c1")]["state"] == "suppressed"
    for active in [("ImdsDialToneFailing", "c1"), ("ImdsLatencyP90High", "c2"),
                   ("ImdsSourceStale", "c1")]:  # another cluster / not a consequence
        assert state[active]["state"] == "active", active
        assert state[active]["inhibitedBy"] == []
    assert sorted((g["labels"]["alertname"], g["labels"]["cluster"], g["receiver"]["name"])
                  for g in groups) == [
        ("ImdsDialToneFailing", "c1", "pager"), ("ImdsErrorRatioHigh", "c1", "pager"),
        ("ImdsLatencyP90High", "c1", "tickets"), ("ImdsLatencyP90High", "c2", "tickets"),
        ("ImdsSourceStale", "c1", "tickets")]
    assert all(set(g["labels"]) == {"alertname", "cluster"} for g in groups)
