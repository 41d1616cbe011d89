"""End to end: the hostile-caller and identity statistics reach ``/metrics`` (issue 14).

A real ``imds-server serve`` process, a real (fake) token service for its remote issuer,
and real sockets: the test causes each event — a stranger throttled at accept, strangers
over their shared budget, a client that never reads, a VM hammering after its 429s, a
watcher that hangs up, identity tokens issued, cached, refused, throttled and failed —
then scrapes and checks each counter is exactly what it caused.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from .._serve import listening_socket, spawn_server
from ..server.conftest import exchange, get, request_bytes
from .conftest import stop_process

pytestmark = pytest.mark.integration

INSTANCE = "/metadata/instance?api-version=2021-02-01"
TOKEN = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource="
GOOD = "https://good.example/"  # the fake token service issues tokens for this one only
MD = {"Metadata": "true"}
VM1 = "127.0.0.1"  # the demo's first VM (with identities); 127.0.0.2 is the second


async def _token_service(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    """``POST /identity/token``: a token for GOOD, 500 for any other resource."""

    async def handle(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            body += await stream.receive_some(65536)
        now = int(time.time())
        if json.loads(body)["resource"] == GOOD:
            status, answer = b"200 OK", json.dumps({
                "access_token": "t", "issued_at": now, "not_before": now,
                "expires_on": now + 3600}).encode()
        else:
            status, answer = b"500 Internal Server Error", b'{"error": "down"}'
        await stream.send_all(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json"
                              b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                              % len(answer) + answer)
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_hostile_and_identity_statistics_are_scraped_after_each_happens(
        tmp_path: Path) -> None:
    credential = tmp_path / "credential"
    credential.write_text("secret\n")
    vm, admin = listening_socket(), listening_socket()
    vm_addr, admin_addr = vm.getsockname(), admin.getsockname()
    async with trio.open_nursery() as nursery:
        service = await nursery.start(_token_service)
        config = tmp_path / "server.toml"
        config.write_text(
            "max-unknown-connections = 2\nunknown-rate-limit = 0.01\nunknown-rate-burst = 3\n"
            "send-timeout = 0.5\nrefusals-before-close = 4\nrate-burst = 5\n"
            "identity-rate-limit = 5\nidentity-issuer = \"remote\"\n"
            f"identity-token-service = \"http://127.0.0.1:{service}\"\n"
            f"identity-token-service-credential = \"{credential}\"\n")
        process = await spawn_server(vm, admin, tmp_path / "data", "--config", str(config),
                                     "--rate-limit", "5")

        async def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
            reply = await get(admin_addr, "/metrics", headers={})
            assert reply.status == 200
            return _samples(reply.body.decode())

        def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
                  **labels: str) -> float:
            return samples.get((name, frozenset(labels.items())), -1.0)

        try:
            with trio.fail_after(60):
                for _ in range(1000):  # readiness lives in another process: polled
                    if (await get(admin_addr, "/healthz", headers={})).status == 200:
                        break
                    await trio.sleep(0.05)
                before = await scrape()
                assert value(before, "imds_http_unknown_connections_refused_total",
                             reason="throttled") == 0
                assert value(before, "imds_identity_requests_total") == 0

                # A stranger: three connections (its burst), each 403 and closed; the
                # fourth is closed at accept by the throttle.
                answered = 0
                for _ in range(4):
                    try:
                        replies = await exchange(vm_addr, request_bytes("GET", INSTANCE, MD),
                                                 source="127.0.5.9")
                    except (trio.BrokenResourceError, ConnectionResetError):  # reset
                        replies = []
                    answered += len(replies)
                assert answered == 3
                # Two strangers hold the shared budget (2); a third is closed at accept.
                held = [socket.create_connection(vm_addr, source_address=(f"127.0.5.{n}", 0))
                        for n in (1, 2)]
                for _ in range(500):
                    if value(await scrape(), "imds_http_unknown_connections_open") == 2:
                        break
                    await trio.sleep(0.01)
                third = socket.socket()
                third.bind(("127.0.5.3", 0))
                third.settimeout(5)
                try:  # closed at accept without an answer: a reset
                    third.connect(vm_addr)
                    assert third.recv(10) == b""
                except ConnectionResetError:
                    pass
                finally:
                    third.close()
                samples = await scrape()
                assert value(samples, "imds_http_unknown_connections_open") == 2
                assert value(samples, "imds_http_unknown_connections_refused_total",
                             reason="throttled") == 1
                assert value(samples, "imds_http_unknown_connections_refused_total",
                             reason="budget") == 1
                for sock in held:
                    sock.close()

                # A VM that keeps asking after its 429s: 5 answered (its burst), then
                # four 429s in a row and the connection is closed.
                flood = request_bytes("GET", INSTANCE, MD, close=False) * 100
                statuses = [r.status for r in await exchange(vm_addr, flood,
                                                             source="127.0.0.2", expect=100)]
                assert statuses.count(429) == 4
                assert value(await scrape(),
                             "imds_http_connections_closed_after_refusals_total") == 1

                # A watcher that hangs up while parked.
                watch = trio.socket.socket()
                await watch.bind(("127.0.0.1", 0))
                await watch.connect(vm_addr)
                await watch.send(request_bytes(
                    "GET", INSTANCE + "&wait_for_change=true&timeout_sec=60", MD))
                for _ in range(500):
                    if value(await scrape(), "imds_watchers_parked") == 1:
                        break
                    await trio.sleep(0.01)
                watch.close()
                for _ in range(500):
                    if value(await scrape(), "imds_watchers_disconnected_total") == 1:
                        break
                    await trio.sleep(0.01)
                assert value(await scrape(), "imds_watchers_parked") == 0

                # A client that never reads its answers (on the admin listener: no rate
                # limit there) is closed after send-timeout.
                stuck = socket.socket()
                stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                stuck.connect(admin_addr)
                stuck.setblocking(False)
                data = request_bytes("GET", "/metrics", close=False) * 2000
                sent = 0
                with trio.move_on_after(3):
                    while sent < len(data):  # the server answers until its buffer fills
                        await trio.lowlevel.wait_writable(stuck)
                        sent += stuck.send(data[sent:])
                for _ in range(500):
                    if value(await scrape(), "imds_http_send_timeouts_total") == 1:
                        break
                    await trio.sleep(0.01)
                stuck.close()

                # Identity (the first demo VM has a system-assigned identity): issued,
                # cached, issuer failure, not found, no header; then throttled.
                async def token(query: str, headers: dict[str, str] = MD) -> int:
                    return (await get(vm_addr, TOKEN + query, headers=headers,
                                      source=VM1)).status

                codes = [await token(GOOD), await token(GOOD),
                         await token("https://bad.example/"),
                         await token(GOOD + "&client_id=nobody"), await token(GOOD, {})]
                assert codes == [200, 200, 500, 400, 400]
                while codes.count(429) < 2:  # over identity-rate-limit: throttled
                    codes.append(await token(GOOD))
                    assert len(codes) < 50
                samples = await scrape()
        finally:
            await stop_process(process)
            vm.close()
            admin.close()
            nursery.cancel_scope.cancel()

    assert value(samples, "imds_http_send_timeouts_total") == 1
    assert value(samples, "imds_http_connections_closed_after_refusals_total") == 1
    assert value(samples, "imds_watchers_disconnected_total") == 1
    assert value(samples, "imds_identity_requests_total") == len(codes)
    assert value(samples, "imds_identity_tokens_total") == codes.count(200)
    assert value(samples, "imds_identity_tokens_cached_total") == codes.count(200) - 1
    assert value(samples, "imds_identity_tokens_issued_total") == 1
    assert value(samples, "imds_identity_issuer_failures_total") == 1
    assert value(samples, "imds_identity_issuer_errors_total") == 1
    assert value(samples, "imds_identity_tokens_served_stale_total") == 0
    assert value(samples, "imds_identity_token_cache_entries") == 1
    refused = {dict(labels)["reason"]: v for (name, labels), v in samples.items()
               if name == "imds_identity_requests_refused_total" and v}
    assert refused == {"no-identity": 1, "no-metadata-header": 1, "rate-limited": 2}
