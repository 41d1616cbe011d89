"""Managed-identity benchmarks (loopback only), against the instance endpoint in the same
run and the same server process:

1. Token latency, one keep-alive connection, sequential requests: *cold* (a resource not
   asked before: the cache misses and the local issuer signs an RS256 JWT) against
   *cached* (the same resource again), and the instance document as the baseline.
2. Requests/s and server CPU per request at 32 connections (``wrk``, alternating rounds):
   the token endpoint answering cached tokens against ``/metadata/instance``.

The server is ``imds-server serve --demo`` (the first demo VM has identities) with every
limit off, pinned to core 0; ``wrk`` and the latency client on core 1.
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._common import write_results
from ._load import free_port, pin, process_cpu, stop_process, wait_http, wrk

TOKEN = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource="
INSTANCE = "/metadata/instance?api-version=2021-02-01"
SAMPLES = 300
ROUNDS = 3
SECONDS = 5


def _start() -> tuple[subprocess.Popen[bytes], int, int]:
    port, admin = free_port(), free_port()
    config = Path(tempfile.mkstemp(suffix=".toml")[1])
    config.write_text("rate-limit = 0\nidentity-rate-limit = 0\nidentity-max-concurrent = 0\n")
    proc = subprocess.Popen([*pin(0), sys.executable, "-m", "imds_server", "serve", "--demo",
                             "--listen", f"127.0.0.1:{port}", "--admin-listen",
                             f"127.0.0.1:{admin}", "--config", str(config)],
                            stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{admin}/healthz")
    return proc, port, admin


def _get(sock: socket.socket, target: str) -> tuple[int, bytes]:
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ", 2)[1]), body


def _latencies(port: int, targets: list[str]) -> list[float]:
    out = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for target in targets:
            start = time.perf_counter()
            status, body = _get(sock, target)
            out.append(time.perf_counter() - start)
            assert status == 200, (status, body[:200])
    return out


def _summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"median_us": statistics.median(ordered) * 1e6,
            "p99_us": ordered[int(len(ordered) * 0.99) - 1] * 1e6, "samples": len(ordered)}


def latency(port: int) -> dict[str, Any]:
    resource = "https://cached.example/"
    _latencies(port, [TOKEN + resource, INSTANCE])  # warm the cache and the target memo
    cold = _latencies(port, [f"{TOKEN}https://cold-{i}.example/" for i in range(SAMPLES)])
    cached = _latencies(port, [TOKEN + resource] * SAMPLES)
    instance = _latencies(port, [INSTANCE] * SAMPLES)
    out: dict[str, Any] = {"cold": _summary(cold), "cached": _summary(cached),
                           "instance": _summary(instance)}
    out["cold_over_cached"] = out["cold"]["median_us"] / out["cached"]["median_us"]
    out["cached_over_instance"] = out["cached"]["median_us"] / out["instance"]["median_us"]
    return out


def throughput(port: int, pid: int) -> dict[str, Any]:
    urls = {"token": f"http://127.0.0.1:{port}{TOKEN}https://cached.example/",
            "instance": f"http://127.0.0.1:{port}{INSTANCE}"}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
    for _ in range(ROUNDS):
        for name, url in urls.items():
            before = process_cpu(pid)
            result = wrk(url, seconds=SECONDS)
            cpu = process_cpu(pid) - before
            runs[name].append({"rps": result["requests"] / SECONDS,
                               "cpu_us_per_request": cpu / result["requests"] * 1e6,
                               "non_2xx": result["non_2xx"]})
    out: dict[str, Any] = {name: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
                           for name, rows in runs.items()}
    out["rps_ratio_token_over_instance"] = out["token"]["rps"] / out["instance"]["rps"]
    out["cpu_ratio_token_over_instance"] = (out["token"]["cpu_us_per_request"]
                                            / out["instance"]["cpu_us_per_request"])
    return out


def main() -> None:
    proc, port, _admin = _start()
    try:
        lat = latency(port)
        rates = throughput(port, proc.pid)
    finally:
        stop_process(proc)
    figures = {"latency": lat, "throughput": rates, "samples": SAMPLES, "rounds": ROUNDS,
               "seconds": SECONDS,
               "note": "measured while other work shared the 2-core machine"}
    rows = [
        ["token latency, cold (sign) median / p99 µs", lat["cold"]["median_us"],
         lat["cold"]["p99_us"]],
        ["token latency, cached median / p99 µs", lat["cached"]["median_us"],
         lat["cached"]["p99_us"]],
        ["instance latency median / p99 µs", lat["instance"]["median_us"],
         lat["instance"]["p99_us"]],
        ["token req/s (cached) / instance req/s", rates["token"]["rps"],
         rates["instance"]["rps"]],
        ["server CPU µs/request token / instance", rates["token"]["cpu_us_per_request"],
         rates["instance"]["cpu_us_per_request"]],
        ["ratios: cold/cached latency, token/instance req/s", lat["cold_over_cached"],
         rates["rps_ratio_token_over_instance"]],
    ]
    md = write_results("identity", figures, ["figure", "a", "b"], rows)
    print(md.read_text())
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
