"""End to end: a real ``imds-server serve`` process, real traffic, a real scrape.

The counts in ``/metrics`` must be exactly the traffic this test sent, and promtool must
find nothing to lint in what the live server exposes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from .._serve import listening_socket, spawn_server
from .._tools import require_tool
from ..server.conftest import get
from .conftest import stop_process

pytestmark = pytest.mark.integration

INSTANCE = "/metadata/instance?api-version=2021-02-01"


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_scrape_after_traffic_counts_exactly_what_was_sent(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "prometheus")
    vm, admin = listening_socket(), listening_socket()
    vm_addr, admin_addr = vm.getsockname(), admin.getsockname()
    process = await spawn_server(vm, admin, tmp_path / "data")
    try:
        with trio.fail_after(60):
            # Polled: readiness lives in another process, there is no event to wait on.
            for _ in range(1000):
                health = await get(admin_addr, "/healthz", headers={}, source="127.0.0.1")
                if health.status == 200:
                    break
                await trio.sleep(0.05)
            for _ in range(5):  # the demo's first VM answers 127.0.0.1
                assert (await get(vm_addr, INSTANCE, source="127.0.0.1")).status == 200
            for _ in range(2):
                assert (await get(vm_addr, INSTANCE, headers={}, source="127.0.0.1")).status \
                    == 400
            assert (await get(vm_addr, INSTANCE, source="127.0.0.9")).status == 403
            scrape = await get(admin_addr, "/metrics", headers={}, source="127.0.0.1")
        assert scrape.status == 200
        text = scrape.body.decode()
        samples = _samples(text)

        def value(name: str, **labels: str) -> float:
            return samples.get((name, frozenset(labels.items())), 0.0)

        ok = value("imds_http_requests_total", route="/metadata/instance",
                   api_version="2021-02-01", code="200")
        assert ok == 5
        refused = {labels: v for (name, labels), v in samples.items()
                   if name == "imds_http_requests_refused_total"}
        assert refused == {frozenset({("reason", "no-metadata-header")}): 2,
                           frozenset({("reason", "unknown-caller")}): 1}
        latency = value("imds_http_request_duration_seconds_count", route="/metadata/instance")
        assert latency >= 7  # the 200s and 400s at least; the 403 may be routed as "other"
        assert value("imds_source_state", source="fabric", state="live") == 1
        assert any(name == "process_resident_memory_bytes" for name, _ in samples)

        with trio.fail_after(30):
            lint = await trio.run_process([promtool, "check", "metrics"], stdin=scrape.body,
                                          capture_stdout=True, capture_stderr=True,
                                          check=False)
        assert (lint.returncode, lint.stdout, lint.stderr) == (0, b"", b"")
    finally:
        await stop_process(process)
        vm.close()
        admin.close()
