"""``imds-server probe``: the dial tone, a VM's request from outside the server.

Each probe sends ``GET URL`` with ``Metadata: true``, as a VM does, and succeeds when the
answer is 200 and the body is a JSON document (or contains ``--expect``). It prints one
line per probe and a summary (success ratio over the window, latency). Exit status: 0 when
the last probe succeeded, 1 when it failed (the service is down now), 2 on bad arguments.
``--metrics-listen`` serves the blackbox exporter's names, ``probe_success`` and
``probe_duration_seconds``, so an existing Prometheus can scrape the prober.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from typing import Any

import attrs
import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from ._collector import parse_listen


@attrs.frozen
class ProbeResult:
    success: bool
    seconds: float
    status: int | None
    error: str | None


def probe_once(client: httpx.Client, url: str, expect: str | None) -> ProbeResult:
    started = time.perf_counter()
    try:
        response = client.get(url, headers={"Metadata": "true"})
        body = response.content
    except httpx.HTTPError as error:
        return ProbeResult(False, time.perf_counter() - started, None,
                           f"{type(error).__name__}: {error}")
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        return ProbeResult(False, seconds, response.status_code,
                           f"HTTP {response.status_code}")
    if expect is not None:
        ok = expect.encode() in body
        return ProbeResult(ok, seconds, 200, None if ok else f"body lacks {expect!r}")
    try:
        json.loads(body)
    except ValueError:
        return ProbeResult(False, seconds, 200, "body is not JSON")
    return ProbeResult(True, seconds, 200, None)


class _ProbeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.success = Gauge("probe_success", "Whether the last probe succeeded.",
                             registry=self.registry)
        self.duration = Gauge("probe_duration_seconds", "How long the last probe took.",
                              registry=self.registry)
        self.status = Gauge("probe_http_status_code", "HTTP status of the last probe.",
                            registry=self.registry)
        self.probes = Counter("probe_attempts", "Probes sent.", ["result"],
                              registry=self.registry)

    def record(self, result: ProbeResult) -> None:
        self.success.set(1 if result.success else 0)
        self.duration.set(result.seconds)
        self.status.set(result.status or 0)
        self.probes.labels("success" if result.success else "failure").inc()


def probe_main(args: argparse.Namespace) -> int:
    if args.interval < 0 or args.count < 0 or args.timeout <= 0:
        print("probe: --interval, --count must be >= 0 and --timeout > 0", file=sys.stderr)
        return 2
    problem = url_problem(args.url)
    if problem:  # a usage error (exit 2), not a service that is down (exit 1)
        print(f"probe: {problem}", file=sys.stderr)
        return 2
    metrics = _ProbeMetrics()
    server: Any = None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.metrics_listen:
        try:
            host, port = parse_listen(args.metrics_listen)
            server, _ = start_http_server(port, host, registry=metrics.registry)
        except (ValueError, OSError) as error:
            print(f"probe: --metrics-listen: {error}", file=sys.stderr)
            return 2
        print(f"probe: metrics on http://{host}:{server.server_address[1]}/metrics",
              flush=True)
    results: list[ProbeResult] = []
    try:
        with httpx.Client(timeout=args.timeout) as client:
            while not stop.is_set():
                result = probe_once(client, args.url, args.expect)
                results.append(result)
                metrics.record(result)
                _report(result, args.json)
                if args.count and len(results) >= args.count:
                    break
                stop.wait(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    if not results:
        return 1
    _summary(results)
    return 0 if results[-1].success else 1


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be probed (not ``http(s)://HOST[:PORT]/...``), or None."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as error:
        return f"{url!r} is not a URL: {error}"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return (f"{url!r} is not an http:// or https:// URL with a host (e.g. "
                "http://169.254.169.254/metadata/instance?api-version=2021-02-01)")
    return None


def _report(result: ProbeResult, as_json: bool) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if as_json:
        # level/logger make it a log line the store and ``logs report`` (uptime) read.
        print(json.dumps({"time": stamp, "level": "info" if result.success else "warning",
                          "logger": "imds_server.probe", **attrs.asdict(result)}), flush=True)
    else:
        state = "up" if result.success else "DOWN"
        detail = f" ({result.error})" if result.error else ""
        print(f"{stamp} {state} {result.seconds * 1000:.2f} ms{detail}", flush=True)


def _summary(results: list[ProbeResult]) -> None:
    ok = [r for r in results if r.success]
    latencies = sorted(r.seconds for r in ok)
    # Latency is of the probes that succeeded; with none, there is no figure to give.
    latency = (f"latency p50 {latencies[len(latencies) // 2] * 1000:.2f} ms "
               f"max {latencies[-1] * 1000:.2f} ms") if latencies \
        else "latency n/a (no probe succeeded)"
    print(f"probe: {len(ok)}/{len(results)} succeeded, uptime {len(ok) / len(results):.1%}, "
          f"{latency}, last {'up' if results[-1].success else 'DOWN'}", flush=True)
