"""Scale (slow, ``make soak``): 1,000 consumers on one nats-server — 4 full replicas and
996 light consumer tasks over 4 connections — every one receives every cluster-wide
publish (the fan-out benchmark's run, asserted for convergence, never for speed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from bench import bench_fanout

from tests._nats import NatsServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_thousand_consumers_all_converge(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    try:
        trio.run(bench_fanout._create_big, server.url)
        latencies = trio.run(bench_fanout._run, server.url, tmp_path)
    finally:
        server.kill()
    rounds = bench_fanout.ROUNDS
    assert len(latencies["full"]) == bench_fanout.FULL * rounds
    assert len(latencies["light"]) == bench_fanout.LIGHT * rounds
    assert bench_fanout.FULL + bench_fanout.LIGHT == 1000
