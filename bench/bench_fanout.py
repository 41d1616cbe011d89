"""Fan-out over a real nats-server (``python -m bench fanout``): one publish of a
cluster-wide (``_all``) event, and the time until it is applied on every consumer.

A few full replicas (``StreamSource`` into a replica over a ``FileLog``) plus many light
consumer tasks (the same consumer settings — R1, memory, no acks, filtered to one host's
subjects and ``_all`` — fetched by a plain nats-py loop over a few shared connections), as
docs say 1,000 hosts need not be 1,000 processes. Reports p50/p99/max of publish → applied
(full replicas) and publish → delivered (light consumers) over ``ROUNDS`` publishes.
Goal: p99 < 1 s. Measured on a machine shared with other work.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import trio
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from imds_replica import ConnectOptions, Event, FileLog, Publisher, StreamSource, open_replica
from imds_replica._stream._wire import consumer_name, host_filters, stream_name

from ._common import write_results
from .bench_stream import _Server

LIGHT = int(os.environ.get("BENCH_FANOUT_LIGHT", "996"))
FULL = int(os.environ.get("BENCH_FANOUT_FULL", "4"))
CONNECTIONS = 4
ROUNDS = int(os.environ.get("BENCH_FANOUT_ROUNDS", "5"))
CLUSTER = "fan"
KEY = ("vms", "all", "compute", "tag")


def _light(url: str, n: int, seen: dict[int, list[float]], ready: threading.Event,
           stop: threading.Event) -> None:
    async def main() -> None:
        conns = [await nats.connect(url) for _ in range(CONNECTIONS)]
        try:
            subs = []
            for i in range(n):
                js = conns[i % CONNECTIONS].jetstream()
                host = f"light-{i}"
                name = consumer_name(host, "fleet")
                await js.add_consumer(stream_name(CLUSTER), ConsumerConfig(
                    name=name, deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=1,
                    ack_policy=AckPolicy.NONE, filter_subjects=host_filters(CLUSTER, host,
                                                                            "fleet"),
                    mem_storage=True, num_replicas=1, inactive_threshold=60))
                subs.append(await js.pull_subscribe_bind(
                    consumer=name, stream=stream_name(CLUSTER), pending_msgs_limit=64))
            ready.set()

            async def loop(psub: Any) -> None:
                while not stop.is_set():
                    try:
                        msgs = await psub.fetch(16, timeout=5.0, heartbeat=1.0)
                    except (nats.errors.TimeoutError, nats.js.errors.APIError):
                        continue  # idle (or a too-short lingering pull on a slow machine)
                    now = time.time()
                    for msg in msgs:
                        seen.setdefault(msg.metadata.sequence.stream, []).append(now)

            await asyncio.gather(*(loop(s) for s in subs))
        finally:
            for nc in conns:
                await nc.close()

    asyncio.run(main())


async def _run(url: str, tmp: Path) -> dict[str, Any]:
    seen: dict[int, list[float]] = {}
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=_light, args=(url, LIGHT, seen, ready, stop), daemon=True)
    thread.start()
    await trio.to_thread.run_sync(ready.wait)
    sources = [StreamSource("fleet", cluster=CLUSTER, host=f"full-{i}", servers=[url],
                            fetch_timeout=2.0, heartbeat=0.5) for i in range(FULL)]
    full_lat: list[float] = []
    light_lat: list[float] = []
    async with trio.open_nursery() as nursery:
        replicas = []
        for i, source in enumerate(sources):
            replicas.append(await nursery.start(_replica, source, tmp / f"log-{i}"))
        async with Publisher.connect(ConnectOptions(servers=(url,)), cluster=CLUSTER) as pub:
            for r in range(ROUNDS):
                await trio.sleep(0.5)
                sent = time.time()
                await pub.publish([Event("fleet", KEY, r + 1, f"round-{r}")], host=None)
                seq = r + 1
                with trio.move_on_after(60):
                    for source in sources:
                        await source.wait_applied(seq)
                        full_lat.append(time.time() - sent)
                    while len(seen.get(seq, ())) < LIGHT:  # noqa: ASYNC110 - another thread fills it
                        await trio.sleep(0.01)
                if len(full_lat) < FULL * (r + 1) or len(seen.get(seq, ())) < LIGHT:
                    stats = [s.statistics() for s in sources]
                    raise RuntimeError(
                        f"round {r}: {len(seen.get(seq, ()))}/{LIGHT} light consumers got "
                        f"seq {seq}; full replicas at {[st.cursor_seq for st in stats]}, "
                        f"errors {[st.last_error for st in stats]}")
                light_lat += [t - sent for t in seen[seq]]
        nursery.cancel_scope.cancel()
    stop.set()
    await trio.to_thread.run_sync(thread.join, 10)
    return {"full": full_lat, "light": light_lat}


async def _replica(source: StreamSource, directory: Path, *,
                   task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    async with open_replica(FileLog(directory, snapshot_every=None, compact_ratio=None),
                            sources=[source]) as replica:
        task_status.started(replica)
        await trio.sleep_forever()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    server = _Server(tmp / "nats")
    try:
        trio.run(_create_big, server.url)
        lat = trio.run(_run, server.url, tmp)
    finally:
        server.stop()
    figures: dict[str, Any] = {"consumers": LIGHT + FULL, "full_replicas": FULL,
                               "light_consumers": LIGHT, "rounds": ROUNDS,
                               "shared_machine": True}
    rows = []
    for kind, values in lat.items():
        figures[kind] = {"p50_s": statistics.median(values), "p99_s": _pct(values, 0.99),
                         "max_s": max(values), "samples": len(values)}
        rows.append([f"{kind} ({'applied, durable' if kind == 'full' else 'delivered'})",
                     len(values), statistics.median(values), _pct(values, 0.99), max(values)])
    md = write_results("fanout", figures, ["consumers", "samples", "p50 s", "p99 s (goal < 1)",
                                           "max s"], rows)
    print(md.read_text())


async def _create_big(url: str) -> None:
    from imds_replica._stream._bridge import Connection
    from imds_replica._stream._wire import stream_subjects

    conn = await Connection.open(ConnectOptions(servers=(url,)))
    try:
        await conn.add_stream(name=stream_name(CLUSTER), subjects=stream_subjects(CLUSTER),
                              max_consumers=LIGHT + FULL + 10, replicas=1)
    finally:
        await conn.aclose()

