"""``GET /metrics`` and ``GET /logs`` over real HTTP, and ``logs fetch`` as a process."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from imds_server.telemetry import LogPipeline, TelemetryConfig, TelemetryMetrics, TelemetryRoutes

from . import _http
from .conftest import access, run_command

pytestmark = pytest.mark.integration


def mount(routes: TelemetryRoutes) -> _http.Handler:
    table = routes.routes()

    async def handler(request: _http.Request) -> _http.Reply:
        route = table.get((request.method, request.path))
        if route is None:
            return _http.Reply(404, b"{}")
        response = await route(request.query, request.headers)
        return _http.Reply(response.status, response.body, response.content_type)

    return handler


async def test_metrics_and_logs_over_http_and_logs_fetch(tmp_path: Path) -> None:
    metrics = TelemetryMetrics(process=False)
    config = TelemetryConfig.from_mapping({"cold": {"max_file_bytes": 4096}})
    pipeline = LogPipeline(config, tmp_path, metrics)
    pipeline.start()
    base = 1_714_557_600.0
    for n in range(200):
        record = access(time=base + n, request_id=f"r-{n}", status=404 if n % 50 == 0 else 200)
        metrics.observe(record)
        pipeline.access(record)
    pipeline.flush()
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(_http.serve, mount(TelemetryRoutes(metrics, tmp_path)))
            admin = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=admin) as client:
                scrape = await client.get("/metrics")
                assert scrape.status_code == 200
                assert scrape.headers["content-type"].startswith("text/plain")
                assert ('imds_http_requests_total{api_version="2021-02-01",code="404",'
                        'route="/metadata/instance"} 4.0') in scrape.text
                every = await client.get("/logs")
                assert len(every.text.splitlines()) == 200  # across rotated gzip files
                bad = await client.get("/logs", params={"level": "loud"})
                assert bad.status_code == 400
                # JSON like the rest of the admin API, not plain text.
                assert bad.headers["content-type"].startswith("application/json")
                assert "level" in bad.json()["error"]
            fetched = await run_command(["logs", "fetch", "--from", admin, "--grep",
                                         r"instance 404", "--since", str(base + 60)])
            assert fetched.returncode == 0, fetched.stderr
            ids = [json.loads(x)["request_id"] for x in fetched.stdout.decode().splitlines()]
            assert ids == ["r-100", "r-150"]
            limited = await run_command(["logs", "fetch", "--from", admin, "--limit", "3"])
            assert len(limited.stdout.splitlines()) == 3
            refused = await run_command(["logs", "fetch", "--from", admin, "--level", "x"])
            assert refused.returncode == 2
            assert b"HTTP 400" in refused.stderr
            nursery.cancel_scope.cancel()
    finally:
        pipeline.stop()


async def test_logs_fetch_from_a_dead_server_fails() -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await run_command(["logs", "fetch", "--from", f"http://127.0.0.1:{port}"])
    assert result.returncode == 1
    assert b"logs fetch" in result.stderr
