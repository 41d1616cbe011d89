"""End to end over a real nats-server: ``imds-replica publish`` into the cluster's stream,
``imds-server serve`` with a ``[[source]]`` of kind stream answers the VM, a later publish
wakes a parked watcher, and faults (nats-server ``kill -9``, the host server ``kill -9``
mid-stream, the stream deleted and recreated, garbage in the stream) each end with the
host's view digest equal to a reference built from the same events."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from imds_replica import Event, View
from tests._nats import NatsServer

pytestmark = pytest.mark.integration
CLUSTER, HOST, VM = "west", "host-1", "vm-e2e"
V = "2021-02-01"
NAME_URL = f"/metadata/instance/compute/name?api-version={V}&format=text"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imds_replica._cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)


class Host:
    """``imds-server serve`` with one stream source, restartable (``kill -9`` + start)."""

    def __init__(self, tmp_path: Path, nats_url: str) -> None:
        self.data = tmp_path / "data"
        self.vm = ("127.0.0.1", _port())
        self.admin = ("127.0.0.1", _port())
        self.config = tmp_path / "server.toml"
        self.config.write_text(f"""
rate-limit = 0
[[source]]
kind = "stream"
name = "fleet"
servers = ["{nats_url}"]
cluster = "{CLUSTER}"
host = "{HOST}"
interval = 5
stale-after = 60
expired-after = 600
""")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp_path / "server.log"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "imds_server", "serve", "--config", str(self.config),
                 "--data-dir", str(self.data), "--listen", "{}:{}".format(*self.vm),
                 "--admin-listen", "{}:{}".format(*self.admin)], stdout=log, stderr=log)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.proc = None

    async def get(self, path: str, admin: bool = False, wait: float = 5) -> httpx.Response:
        host, port = self.admin if admin else self.vm
        async with httpx.AsyncClient(timeout=wait) as client:
            return await client.get(f"http://{host}:{port}{path}",
                                    headers={"Metadata": "true"})

    async def wait_name(self, name: str, limit: float = 30.0) -> None:
        with trio.fail_after(limit):
            while True:
                try:
                    answer = await self.get(NAME_URL)
                    if answer.status_code == 200 and answer.text == name:
                        return
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.1)

    async def view_digest(self) -> bytes:
        answer = await self.get("/view", admin=True)
        assert answer.status_code == 200
        body = answer.json()
        assert not body["truncated"]
        view = View()
        view.load(Event.from_dict(r) for r in body["registers"])
        return view.digest()

    async def sources(self) -> dict[str, Any]:
        return dict((await self.get("/sources", admin=True)).json())

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """``GET /metrics`` on the admin port: (sample name, sorted labels) → value."""
        from prometheus_client.parser import text_string_to_metric_families

        answer = await self.get("/metrics", admin=True)
        assert answer.status_code == 200
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(answer.text)
                for sample in family.samples}


class Region:
    """The regional side: every event published, and the reference view they make."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: list[Event] = []
        self.version = 100

    def publish(self, spec: dict[tuple[str, ...], Any], host: str | None = HOST) -> str:
        lines = []
        for key, value in spec.items():
            self.version += 1
            event = Event("fleet", key, self.version, value)
            self.events.append(event)
            lines.append(json.dumps(event.to_dict()))
        scope = ["--host", host] if host else ["--all-hosts"]
        done = _cli("publish", "--nats", self.url, "--cluster", CLUSTER, *scope, "-",
                    stdin="\n".join(lines) + "\n")
        assert done.returncode == 0, done.stderr
        return done.stdout

    def republish_all(self) -> None:
        done = _cli("publish", "--nats", self.url, "--cluster", CLUSTER, "--host", HOST, "-",
                    stdin="".join(json.dumps(e.to_dict()) + "\n" for e in self.events))
        assert done.returncode == 0, done.stderr

    def create_stream(self) -> None:
        done = _cli("stream", "create", "--nats", self.url, "--cluster", CLUSTER,
                    "--max-consumers", "10")
        assert done.returncode == 0, done.stderr

    def digest(self) -> bytes:
        view = View()
        view.load(self.events)
        return view.digest()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[NatsServer, Region, Host]]:
    nats = NatsServer(tmp_path / "nats").start()
    host = Host(tmp_path, nats.url)
    try:
        yield nats, Region(nats.url), host
    finally:
        host.kill()
        nats.kill()


def _name(i: int) -> tuple[str, ...]:
    return ("vms", f"vm-{i}", "compute", "name")


async def test_publish_serve_and_wake_a_watcher(
        world: tuple[NatsServer, Region, Host]) -> None:
    _, region, host = world
    region.create_stream()
    out = region.publish({("callers", "127.0.0.1"): VM,
                          ("vms", VM, "compute", "name"): "first",
                          ("vms", VM, "compute", "location"): "westus"})
    assert "published 3, superseded 0, refused 0" in out
    host.start()
    await host.wait_name("first")
    status = (await host.sources())["fleet"]
    assert status["state"] == "live"
    assert status["adapter"]["pending"] == 0  # the lag in messages
    assert status["adapter"]["cursor_seq"] == 3
    assert status["adapter"]["phase"] == "following"

    answers: list[httpx.Response] = []

    async def watch() -> None:
        answers.append(await host.get(NAME_URL + "&wait_for_change=true&timeout_sec=60",
                                      wait=70))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await trio.sleep(1.0)  # parked
        await trio.to_thread.run_sync(region.publish, {("vms", VM, "compute", "name"): "second"})
        with trio.fail_after(30):
            while not answers:  # noqa: ASYNC110
                await trio.sleep(0.05)
    assert answers[0].status_code == 200
    assert answers[0].text == "second"
    assert await host.view_digest() == region.digest()


async def test_faults_end_with_the_reference_view(
        world: tuple[NatsServer, Region, Host]) -> None:
    nats, region, host = world
    region.create_stream()
    region.publish({("callers", "127.0.0.1"): VM, ("vms", VM, "compute", "name"): "v0",
                    **{_name(i): f"a{i}" for i in range(50)}})
    host.start()
    await host.wait_name("v0")

    # kill -9 of nats-server mid-stream, then restart on the same port and store.
    nats.kill()
    await trio.sleep(1.0)
    nats.start()
    await trio.to_thread.run_sync(region.publish, {("vms", VM, "compute", "name"): "v1",
                                                   **{_name(i): f"b{i}" for i in range(50)}})
    await host.wait_name("v1", limit=60)
    assert await host.view_digest() == region.digest()

    # The host server killed mid-stream: what is published meanwhile arrives after the
    # restart, from its cursor.
    log_size = sum(f.stat().st_size for f in host.data.rglob("*") if f.is_file())
    host.kill()
    region.publish({("vms", VM, "compute", "name"): "v2",
                    **{_name(i): f"c{i}" for i in range(10)}})
    host.start()
    await host.wait_name("v2")
    assert await host.view_digest() == region.digest()
    grown = sum(f.stat().st_size for f in host.data.rglob("*") if f.is_file()) - log_size
    assert grown < 50 * 200, f"the restart re-applied old data ({grown} bytes logged)"

    # A garbage message in the stream: refused, the stream goes on.
    from imds_replica._stream._bridge import Connection
    from imds_replica._stream._transport import ConnectOptions

    conn = await Connection.open(ConnectOptions(servers=(nats.url,)))
    try:
        garbage = await conn.publish(f"imds.{CLUSTER}.{HOST}.fleet.{'0' * 32}", b"\xc1")
        assert garbage.seq is not None
        await trio.to_thread.run_sync(region.publish, {("vms", VM, "compute", "name"): "v3"})
        await host.wait_name("v3")
        assert await host.view_digest() == region.digest()

        # The stream deleted and recreated, then refilled: the host resyncs from 0.
        await conn.delete_stream(f"IMDS_{CLUSTER.upper()}")
    finally:
        await conn.aclose()
    await trio.to_thread.run_sync(region.create_stream)
    region.version += 1000  # refilled with newer versions (docs/fleet.md: resync rules)
    refill = {e.key: e.value for e in region.events}
    region.events.clear()
    await trio.to_thread.run_sync(region.publish, {**refill,
                                                   ("vms", VM, "compute", "name"): "v4"})
    await host.wait_name("v4", limit=60)
    assert await host.view_digest() == region.digest()

    # What happened is in /metrics (since the restart): the garbage refused, the resync of
    # the recreated stream, its cursor, no lag.
    fleet = (("source", "fleet"),)
    with trio.fail_after(20):
        while True:
            metrics = await host.metrics()
            if metrics.get(("imds_stream_pending_messages", fleet)) == 0:
                break
            await trio.sleep(0.2)
    assert metrics[("imds_stream_connected", fleet)] == 1
    assert metrics[("imds_stream_messages_refused_total", fleet)] == 1
    assert metrics[("imds_stream_resyncs_total", fleet)] == 1
    assert metrics[("imds_stream_consumer_recreations_total", fleet)] >= 1
    assert metrics[("imds_stream_messages_delivered_total", fleet)] >= len(refill) + 1
    assert metrics[("imds_stream_events_submitted_total", fleet)] >= len(refill)
    assert metrics[("imds_stream_batches_total", fleet)] >= 1
    assert metrics[("imds_stream_connects_total", fleet)] >= 1
    assert metrics[("imds_stream_delivery_gaps_total", fleet)] == 0
    host_lane = (("lane", "host"), ("source", "fleet"))
    stats = (await host.sources())["fleet"]["adapter"]
    assert metrics[("imds_stream_cursor_sequence", host_lane)] == stats["host_seq"] > 0
