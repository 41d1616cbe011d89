"""The durable log: ingest, replay, cold start and compaction, each against a baseline.

* ingest: ``FileLog.append`` with 1, 32, 512 concurrent submitters (batches of 1 and 100
  events, fsync always) vs a raw loop that encodes and frames the same batches, writes them
  and fdatasyncs once per 1,000 records; p99 acknowledgement latency. Each shape runs right
  after its own raw loop, over the same pool of pre-built ``Event``s (construction is
  outside the timed region on both), framed with the same ``batch_payload``/``frame``. The
  pool covers the 10,000 live keys of the cold-start goal; after its first pass every event
  is a duplicate for the view. One more row keeps session one's shape at 512 submitters
  (4 batches of keys per submitter: 204,800 keys) as the worst case. The durable side also
  pays what the raw loop does not: a trio task per submitter parked and woken per batch,
  group commit (one fdatasync per group, at most one batch per submitter), and applying
  every event to the view (including the deferred sort of new keys into its index, forced
  by one read inside the timed region). The "trio floor" row measures the first of those
  alone (park + wake one task per batch, no I/O, no encoding): the ceiling of any
  one-task-per-submitter design.
* pipelined ingest: ``FileLog.append_nowait`` with one-event batches, each submitter keeping
  a window of batches in flight and parking once per window (1 x 1024, 32 x 32, 512 x 8),
  against its own raw loop as above.
* replay: recovering 1,000,000 events (batches of 100) into a View (``FileLog.run`` up to
  ready; freeing the view afterwards is not timed) vs a raw loop that reads the same
  format-2 segment, checks every CRC (each group header's salted one and each record's)
  and decodes every record, keeping nothing; rounds alternate the two, the ratio is each
  round's pair, reported as the median and the spread. On 10,000 keys (the issue's shape)
  and, as the worst case, on 1,000,000 distinct keys.
* cold start with a snapshot after those 1,000,000 events on 10,000 live keys.
* log bytes before and after compaction.

``BENCH_LOG_ONLY=replay`` runs only the two replay rows (a minute instead of several) and
``BENCH_LOG_REPLAY_KEYS=10000`` (or ``1000000``; implies the former) only one of them;
``BENCH_LOG_ROUNDS`` sets the replay rounds (5). Such a partial run
prints its table and does not write ``bench/results/log.*`` (the committed figures stay
those of a whole run).
"""

from __future__ import annotations

import gc
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import trio

from imds_replica import Event, View
from imds_replica._log import FileLog
from imds_replica._log._frame import (
    FILE_HEADER_SIZE,
    GROUP_SIZE,
    HEADER,
    HEADER_SIZE,
    RecordType,
    batch_payload,
    crc32c,
    frame,
    group_header,
    unpack,
)
from imds_replica._log._segment import read_meta

from ._common import write_results

INGEST_SECONDS = 2.5
REPLAY_EVENTS = 1_000_000
REPLAY_ROUNDS = int(os.environ.get("BENCH_LOG_ROUNDS") or 5)
LIVE_KEYS = 10_000
_BATCH = int(RecordType.BATCH)


def _events(n: int, offset: int = 0) -> list[Event]:
    return [Event("fabric", ("vms", f"vm{(offset + i) // 10}", "compute", f"f{i % 10}"),
                  offset + i, {"v": offset + i, "tag": "abcdefghij"}) for i in range(n)]


# -- ingest --------------------------------------------------------------------------------
def _pool(batch: int, keys: int) -> list[tuple[Event, ...]]:
    """Batches covering ``keys`` distinct keys once; both sides cycle through the same
    pool, so after the first pass every event is a duplicate for the view. Tuples, as
    ``Replica.submit`` hands its validated batches to the log."""
    return [tuple(_events(batch, offset=i * batch)) for i in range(max(keys // batch, 1))]


async def _ingest(directory: Path, submitters: int, pool: list[tuple[Event, ...]],
                  window: int = 0, seconds: float = INGEST_SECONDS) -> dict[str, float]:
    """``window`` 0: one ``append`` per batch, latency per batch. Otherwise through
    ``append_nowait``: each submitter queues ``window`` batches, then waits on the last
    receipt (receipts complete in order, so that covers the window) and starts the next;
    latency per window, from its first batch queued to the submitter being told."""
    batch = len(pool[0])
    latencies: list[float] = []
    done = 0
    view = View()
    log = FileLog(directory, snapshot_every=None, compact_ratio=None)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, view)
        deadline = trio.current_time() + seconds
        started = time.perf_counter()

        async def one_at_a_time(w: int) -> None:
            nonlocal done
            i = w
            while trio.current_time() < deadline:
                t = time.perf_counter()
                await log.append(pool[i % len(pool)])
                latencies.append(time.perf_counter() - t)
                done += batch
                i += submitters

        async def windowed(w: int) -> None:
            nonlocal done
            i = w
            while trio.current_time() < deadline:
                t = time.perf_counter()
                for _ in range(window):
                    receipt = log.append_nowait(pool[i % len(pool)])
                    i += submitters
                await receipt.wait()
                latencies.append(time.perf_counter() - t)
                done += batch * window

        async with trio.open_nursery() as writers:
            for w in range(submitters):
                writers.start_soon(windowed if window else one_at_a_time, w)
        # The view sorts new keys into its index at the first ordered read, not on apply:
        # one such read inside the timed region, so that deferred work is counted too.
        next(view.registers(("vms",)), None)
        elapsed = time.perf_counter() - started
        stats = log.statistics()
        nursery.cancel_scope.cancel()
    latencies.sort()
    return {"events_per_s": done / elapsed,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
            "mean_group": stats.batches / max(stats.commits, 1)}


def _raw_ingest(directory: Path, pool: list[tuple[Event, ...]]) -> float:
    """Encode + frame + write, fdatasync per 1,000 records: the floor of any durable log."""
    batch = len(pool[0])
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "raw.seg", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    records = events = 0
    pending: list[bytes] = []
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < INGEST_SECONDS:
            pending.append(frame(_BATCH, batch_payload(pool[records % len(pool)], None)))
            records += 1
            events += batch
            if len(pending) == 1000:
                os.write(fd, b"".join(pending))
                os.fdatasync(fd)
                pending = []
        os.write(fd, b"".join(pending))
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return events / (time.perf_counter() - started)


async def _trio_floor(submitters: int) -> float:
    """Round trips/s of park + wake of one task per "batch" through one server task."""
    queue: list[trio.lowlevel.Task] = []
    wake = trio.Event()
    done = 0
    deadline = trio.current_time() + 1.0

    async def server() -> None:
        nonlocal wake
        while True:
            while not queue:
                wake = trio.Event()
                await wake.wait()
            group = queue[:]
            queue.clear()
            await trio.lowlevel.checkpoint()  # stands in for the fdatasync hand-off
            for task in group:
                trio.lowlevel.reschedule(task)

    async def client() -> None:
        nonlocal done
        while trio.current_time() < deadline:
            queue.append(trio.lowlevel.current_task())
            wake.set()
            await trio.lowlevel.wait_task_rescheduled(
                lambda _: trio.lowlevel.Abort.SUCCEEDED)
            done += 1

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        async with trio.open_nursery() as clients:
            for _ in range(submitters):
                clients.start_soon(client)
        nursery.cancel_scope.cancel()
    return done / (time.perf_counter() - started)


# -- replay --------------------------------------------------------------------------------
def _build_log(directory: Path, keys: int) -> None:
    """A one-segment log of REPLAY_EVENTS events in batches of 100, framed like FileLog's."""
    trio.run(_open_close, directory, False)
    value = msgpack.packb({"v": 1, "tag": "abcdefghij"})
    salt = read_meta(directory).salt
    with open(directory / "00000001-00000001.seg", "ab") as f:
        offset = f.tell()
        for start in range(0, REPLAY_EVENTS, 100):
            events = [["fabric", ["vms", f"vm{(i % keys) // 10}", "compute", f"f{i % 10}"],
                       i, False, value, None] for i in range(start, start + 100)]
            record = frame(RecordType.BATCH, msgpack.packb([events, None]))
            data = group_header(salt, 1, offset, len(record), 1) + record  # one write each
            f.write(data)
            offset += len(data)


async def _open_close(directory: Path, snapshot: bool, keep: list[View] | None = None) -> Any:
    """Open (replay) and close the log; ``keep`` gets the recovered view, so that a timed
    replay does not also time freeing it (a server keeps its view)."""
    log = FileLog(directory, fsync="none", snapshot_every=None, compact_ratio=None)
    view = View()
    if keep is not None:
        keep.append(view)
    async with trio.open_nursery() as nursery:
        recovery = await nursery.start(log.run, view)
        if snapshot:
            await log.snapshot()
        nursery.cancel_scope.cancel()
    return recovery


def _raw_replay(path: Path) -> int:
    """The floor of any replay: read the format-2 segment, check every CRC (the salted
    group header's and the record's) and decode every record, keeping nothing."""
    salt = read_meta(path.parent).salt
    buf = memoryview(path.read_bytes())
    offset, events = FILE_HEADER_SIZE, 0
    while offset < len(buf):
        if crc32c(buf[offset + 4:offset + GROUP_SIZE], salt) != \
                HEADER.unpack_from(buf, offset)[0]:
            raise AssertionError("bad group crc")
        offset += GROUP_SIZE  # each group holds one record (see _build_log)
        crc, length, _ = HEADER.unpack_from(buf, offset)
        end = offset + HEADER_SIZE + length
        if crc32c(buf[offset + 4:end]) != crc:
            raise AssertionError("bad crc")
        events += len(unpack(buf[offset + HEADER_SIZE:end])[0])
        offset = end
    return events


def _replay_rounds(directory: Path) -> dict[str, Any]:
    """Rounds alternating the raw loop and a replay (a restart: ``FileLog.run`` up to
    ready) on one log: the ratio of each round's neighbours, their median and spread."""
    segment = directory / "00000001-00000001.seg"
    raws, ours, ratios = [], [], []
    for _ in range(REPLAY_ROUNDS):
        raws.append(_best(lambda: _raw_replay(segment), runs=1))
        kept: list[View] = []
        ours.append(_best(lambda kept=kept: trio.run(_open_close, directory, False, kept),
                          runs=1))
        ratios.append(ours[-1] / raws[-1])
        del kept
        gc.unfreeze()  # each replay froze what it loaded; let the next start clean
        gc.collect()
    return {"seconds": statistics.median(ours), "raw_seconds": statistics.median(raws),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios), "rounds": REPLAY_ROUNDS, "ratios": ratios,
            "bytes": segment.stat().st_size,
            "load_average": list(os.getloadavg())}


def _best(fn: Any, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


async def _compact(directory: Path) -> tuple[int, int]:
    log = FileLog(directory, fsync="none", snapshot_every=None, compact_ratio=None)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, View())
        result = await log.compact()
        nursery.cancel_scope.cancel()
    return result.bytes_before, result.bytes_after


#: (batch, submitters, distinct keys): the issue's shapes on the live-key count of the
#: cold-start goal, then the worst case of session one's bench (every submitter cycling
#: through 4 batches of keys of its own: 204,800 keys, a view far outside the CPU caches).
INGEST_SHAPES = [(b, c, LIVE_KEYS) for b in (1, 100) for c in (1, 32, 512)] + [
    (100, 512, 512 * 4 * 100)]


#: (submitters, window): one-event batches through ``append_nowait``, each submitter
#: keeping ``window`` batches in flight; 10,000 keys as above.
NOWAIT_SHAPES = [(1, 1024), (32, 32), (512, 8)]


def _ingest_rows(base: Path, figures: dict[str, Any], rows: list[list[Any]]) -> float:
    """Each shape right after its own raw loop over the same pool (a ratio of neighbours on
    a noisy machine); returns the raw batch-1 rate for the trio-floor row."""
    raw_batch1 = 0.0
    for n, (b, c, keys) in enumerate(INGEST_SHAPES):
        pool = _pool(b, keys)
        raw = _raw_ingest(base / f"raw-{n}", pool)
        r = trio.run(_ingest, base / f"ingest-{n}", c, pool)
        ratio = r["events_per_s"] / raw
        name = f"ingest_batch{b}_c{c}" + ("" if keys == LIVE_KEYS else f"_keys{keys}")
        figures[name] = {**r, "keys": keys, "raw_events_per_s": raw, "ratio_vs_raw": ratio}
        if b == 1:
            raw_batch1 = raw
        rows.append([f"FileLog ingest, batch {b}, {c} submitters, {keys:,} keys (mean "
                     f"group {r['mean_group']:.1f})", r["events_per_s"], raw,
                     f"{r['p99_ms']:.2f}", f"{ratio:.2f}"])
        print(rows[-1], flush=True)
    pool = _pool(1, LIVE_KEYS)
    for n, (c, window) in enumerate(NOWAIT_SHAPES):
        raw = _raw_ingest(base / f"raw-nowait-{n}", pool)
        r = trio.run(_ingest, base / f"nowait-{n}", c, pool, window)
        ratio = r["events_per_s"] / raw
        name = f"ingest_nowait_batch1_c{c}_w{window}"
        figures[name] = {**r, "keys": LIVE_KEYS, "raw_events_per_s": raw,
                         "ratio_vs_raw": ratio}
        rows.append([f"FileLog append_nowait, batch 1, {c} submitters x {window} in flight, "
                     f"{LIVE_KEYS:,} keys (mean group {r['mean_group']:.1f}; p99 per window)",
                     r["events_per_s"], raw, f"{r['p99_ms']:.2f}", f"{ratio:.2f}"])
        print(rows[-1], flush=True)
    return raw_batch1


def _replay_keys() -> tuple[int, ...]:
    chosen = os.environ.get("BENCH_LOG_REPLAY_KEYS")
    if not chosen:
        return (LIVE_KEYS, REPLAY_EVENTS)
    return tuple(int(k) for k in chosen.split(","))


def main() -> None:
    only = os.environ.get("BENCH_LOG_ONLY")
    if only not in (None, "", "replay"):
        raise SystemExit(f"BENCH_LOG_ONLY={only!r}: only 'replay' is known")
    base = Path(tempfile.mkdtemp(prefix="bench-log-", dir=os.environ.get("BENCH_TMP")))
    figures: dict[str, Any] = {}
    rows: list[list[Any]] = []
    partial = bool(only) or bool(os.environ.get("BENCH_LOG_REPLAY_KEYS"))
    try:
        if not partial:
            raw_batch1 = _ingest_rows(base, figures, rows)
            floor = trio.run(_trio_floor, 512)
            figures["trio_floor_batches_per_s_c512"] = floor
            rows.append(["trio floor: park + wake 1 task per batch, 512 tasks, no I/O "
                         "(batches/s)", floor, "", "", f"{floor / raw_batch1:.2f} of raw "
                         "batch 1"])
            print(rows[-1], flush=True)
        for keys in _replay_keys():
            directory = base / f"replay-{keys}"
            _build_log(directory, keys)
            figures[f"replay_{keys}_keys"] = r = _replay_rounds(directory)
            rows.append([f"replay 1M events on {keys:,} keys (s, median of {r['rounds']}) vs "
                         f"raw read+CRC+decode {r['raw_seconds']:.3f} s", r["seconds"], "", "",
                         f"{r['ratio']:.2f}x (rounds {r['ratio_min']:.2f}-"
                         f"{r['ratio_max']:.2f}x)"])
            print(rows[-1], flush=True)
        if partial:
            for row in rows:
                print(" | ".join(map(str, row)))
            return
        directory = base / f"replay-{LIVE_KEYS}"
        trio.run(_open_close, directory, True)  # take a snapshot at the end of the history
        cold = [trio.run(_open_close, directory, False).seconds for _ in range(3)]
        figures["cold_start_snapshot_seconds"] = statistics.median(cold)
        rows.append(["cold start with snapshot, 1M events history, 10k keys (s, median)",
                     statistics.median(cold), "", "", "goal < 0.5 s"])
        before, after = trio.run(_compact, directory)
        figures["compaction_bytes"] = {"before": before, "after": after}
        rows.append(["log bytes before -> after compaction", f"{before:,} -> {after:,}", "", "",
                     f"{after / before:.3f}"])
        print(rows[-2:], flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    md = write_results("log", figures, ["measure", "value (events/s unless noted)",
                                        "raw loop, same pool (events/s)",
                                        "p99 ack ms", "ratio"], rows)
    print(md.read_text())
