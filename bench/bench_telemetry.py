"""Cost of telemetry on the read path: the same server, telemetry off vs on, same run.

Two measurements:

1. The real read path: an in-process ``Server`` (demo fleet, in-memory log, no rate limit)
   answering ``GET /metadata/instance`` over loopback keep-alive connections driven by
   client tasks in the same trio loop, with ``NullObserver`` (off) and with telemetry's
   observer (on: metrics + JSON access line + writer thread + cold file). Runs alternate
   off/on and the best of each is kept (the machines are shared). The client shares the
   process, so throughput is the whole loop's; the ratio is what the issue bounds (<= 10%).
2. The observer alone: µs per ``request(record)`` call, against ``NullObserver``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import trio

from bench._common import write_results
from imds_server._config import config_from_mapping
from imds_server._observe import AccessRecord, NullObserver, RequestObserver
from imds_server._server import Server
from imds_server.telemetry import Telemetry, TelemetryConfig

REQUEST = (b"GET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\n"
           b"Host: 169.254.169.254\r\nMetadata: true\r\n\r\n")
CLIENTS = 8
SECONDS = 2.0
ROUNDS = 3


async def _client(port: int, deadline: float, counts: list[int]) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    buffer = b""
    async with stream:
        while trio.current_time() < deadline:
            await stream.send_all(REQUEST)
            while True:  # read one whole response (Content-Length framed)
                head_end = buffer.find(b"\r\n\r\n")
                if head_end >= 0:
                    head = buffer[:head_end].lower()
                    at = head.find(b"content-length:")
                    length = int(head[at + 15:head.find(b"\r\n", at) if head.find(
                        b"\r\n", at) >= 0 else None])
                    if len(buffer) >= head_end + 4 + length:
                        status = buffer[9:12]
                        assert status == b"200", buffer[:200]
                        buffer = buffer[head_end + 4 + length:]
                        break
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise RuntimeError("server closed the connection")
                buffer += chunk
            counts[0] += 1


async def _throughput(observer: RequestObserver) -> float:
    config = config_from_mapping({"listen": "127.0.0.1:0", "admin-listen": "127.0.0.1:0",
                                  "demo": True, "rate-limit": 0})
    server = Server(config, observer=observer)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        for _ in range(1000):  # the demo fleet is seeded right after the listeners start
            if server.replica is not None:
                break
            await trio.sleep(0.01)
        port = server.vm_address[1]
        await _warm_up(port)
        counts = [0]
        started = trio.current_time()
        deadline = started + SECONDS
        async with trio.open_nursery() as clients:
            for _ in range(CLIENTS):
                clients.start_soon(_client, port, deadline, counts)
        elapsed = trio.current_time() - started
        server.shutdown()
    return counts[0] / elapsed


async def _warm_up(port: int) -> None:
    await _client(port, trio.current_time() + 0.2, [0])


async def _read_path(log_dir: Path) -> tuple[float, float]:
    telemetry = Telemetry(TelemetryConfig.from_mapping({}, cluster="bench", machine="bench"),
                          log_dir=log_dir)
    best_off = best_on = 0.0
    async with trio.open_nursery() as nursery:
        await nursery.start(telemetry.run)
        for _ in range(ROUNDS):
            best_off = max(best_off, await _throughput(NullObserver()))
            best_on = max(best_on, await _throughput(telemetry.observer))
        nursery.cancel_scope.cancel()
    return best_off, best_on


def _observer_cost(log_dir: Path, n: int = 50_000) -> tuple[float, float]:
    record = AccessRecord(time=time.time(), request_id="1a2b-3c4d-17", caller="10.1.2.3",
                          vm="02aab8a4-74ef-476e-8182-f6d2ba4166a6", method="GET",
                          route="/metadata/instance", path="/metadata/instance",
                          api_version="2021-02-01", status=200, bytes=1827, seconds=0.00031)
    telemetry = Telemetry(TelemetryConfig.from_mapping({}, cluster="b", machine="b"),
                          log_dir=log_dir)
    telemetry.pipeline.start()
    try:
        results = []
        for observer in (NullObserver(), telemetry.observer):
            best = float("inf")
            for _ in range(ROUNDS):
                started = time.perf_counter()
                for _ in range(n):
                    observer.request(record)
                best = min(best, (time.perf_counter() - started) / n)
                telemetry.pipeline.flush(30.0)
            results.append(best * 1e6)
    finally:
        telemetry.pipeline.stop()
    return results[0], results[1]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        off_rps, on_rps = trio.run(_read_path, Path(tmp) / "read-path")
        null_us, observer_us = _observer_cost(Path(tmp) / "observer")
    overhead = 1 - on_rps / off_rps
    figures = {
        "read_path_requests_per_second_off": round(off_rps),
        "read_path_requests_per_second_on": round(on_rps),
        "read_path_overhead_ratio": round(overhead, 4),
        "read_path_us_per_request_off": round(1e6 / off_rps, 2),
        "observer_us_per_request": round(observer_us - null_us, 2),
        "clients": CLIENTS, "seconds_per_run": SECONDS, "rounds": ROUNDS,
    }
    rows = [
        ["read path, telemetry off (NullObserver)", f"{off_rps:,.0f} req/s",
         f"{1e6 / off_rps:.1f} µs/req"],
        ["read path, telemetry on", f"{on_rps:,.0f} req/s", f"{1e6 / on_rps:.1f} µs/req"],
        ["throughput cost of telemetry (goal <= 10%)", f"{overhead:.1%}", ""],
        ["observer alone (metrics + access line)", f"{observer_us - null_us:.2f} µs/req",
         f"null call {null_us:.2f} µs"],
    ]
    md = write_results("telemetry", figures, ["measure", "value", "detail"], rows)
    print(md.read_text())
