"""A seeded, deterministic simulation of a fleet of replicas: ``simulate_fleet(FleetConfig)``.

Theory of operation
-------------------
``hosts`` hosts each run the real replica (``open_replica`` over a ``MemoryLog``, so the real
``Replica.submit``, ``View`` and merge) in one ``trio.run`` on a ``MockClock``. ``sources``
sources each own an append-only stream of events (seq 1, 2, ...) whose versions come
from a ``HybridClock`` fed by a *skewed*, coarse wall clock, so versions of different sources
collide and the merge's tie-breaks matter. The protocol is the one ``models/`` checks:

* **publish**: a source appends an event to its stream and pushes it to every host;
* **submit**: a host drops what its cursor already covers, submits the rest as one batch
  with ``Checkpoint(source, cursor)``, where the cursor is the end of the contiguous prefix
  of seqs received (out-of-order events are applied at once; the cursor waits for the gap);
  once ``submit`` returns (durable) the host acknowledges its cursor;
* **redeliver**: a source resends everything after a host's acknowledged cursor when no
  acknowledgement came for ``ack_wait`` seconds, backing off exponentially to
  ``max_backoff`` (JetStream's AckWait/BackOff);
* **crash**: a host's replica is cancelled; after a downtime it restarts over
  ``MemoryLog(records)`` of the old log (every acknowledged record is durable), recovers its
  checkpoints and asks every source to resume from them.

The network is one priority queue of timed deliveries processed by a single task that
advances the ``MockClock`` itself (a discrete-event simulation: no task per message, no
real sleeping). It loses, delays (so reorders) and duplicates messages, and drops everything
to and from partitioned hosts until the partition heals. Every random choice comes from one
``random.Random(seed)``, and only one task acts at a time, so a seed replays exactly: the
report's ``trace_digest`` hashes every delivery, and every assertion message names the seed.

Checked (``AssertionError`` naming the seed): after every restart, every event the host had
acknowledged is still in force in its recovered view; at the end every host has caught up
on every stream and holds a view byte-identical (``View.digest``) to a reference view fed
every event once.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import struct
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import trio
import trio.testing

from .._clock import HybridClock
from .._event import Event, Key
from .._logport import Checkpoint, MemoryLog
from .._merge import order_key
from .._replica import Replica, open_replica
from .._view import View

#: Wall-clock epoch of simulated time 0 (ms): versions look like real HLC versions.
EPOCH_MS = 1_700_000_000_000

# Queue entry kinds. Messages (counted, subject to loss and partitions) ...
_DATA, _ACK, _RESUME = 0, 1, 2
# ... and local timers (free, never lost).
_PUBLISH, _SWEEP, _CRASH, _RESTART, _PARTITION, _HEAL = 3, 4, 5, 6, 7, 8
_MESSAGE_KINDS = {_DATA: "data", _ACK: "ack", _RESUME: "resume"}


@attrs.frozen
class FleetConfig:
    """One simulated scenario; times are simulated seconds. ``seed`` fixes everything."""

    hosts: int = 20
    sources: int = 3
    keys: int = 20
    events_per_source: int = 30
    #: Sources publish at random times in [0, publish_window).
    publish_window: float = 60.0
    delete_fraction: float = 0.15
    #: Each message is lost with this probability ...
    loss: float = 0.05
    #: ... and, if not, delivered a second time with this one.
    duplicate: float = 0.02
    #: One-way delay: ``delay`` plus an exponential with mean ``jitter`` (this reorders).
    delay: float = 0.02
    jitter: float = 0.1
    #: At ``partition_start`` this fraction of hosts is cut off for ``partition_duration``.
    partition_fraction: float = 0.3
    partition_start: float = 10.0
    partition_duration: float = 30.0
    #: This fraction of hosts crashes once, at a random time in the publish window, and
    #: restarts after ``crash_downtime`` (x 0.5..1.5).
    crash_fraction: float = 0.1
    crash_downtime: float = 5.0
    #: Each source's wall clock is off by up to this many seconds (either way) ...
    clock_skew: float = 2.0
    #: ... and ticks in steps of this many seconds. Coarse on purpose: versions of different
    #: sources then collide, so the merge's tie-breaks (source, digest) decide often.
    clock_resolution: float = 5.0
    ack_wait: float = 1.0
    max_backoff: float = 8.0
    max_batch: int = 256
    #: Give up (AssertionError) if the fleet has not caught up by this simulated time.
    deadline: float = 3600.0
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        if self.hosts < 1 or self.sources < 1 or self.keys < 1 or self.events_per_source < 0:
            raise ValueError("hosts, sources and keys must be >= 1, events_per_source >= 0")
        for name in ("loss", "duplicate", "partition_fraction", "crash_fraction",
                     "delete_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1)")
        if self.ack_wait <= 0 or self.max_backoff < self.ack_wait or self.max_batch < 1:
            raise ValueError("need ack_wait > 0, max_backoff >= ack_wait, max_batch >= 1")

    def without_faults(self) -> FleetConfig:
        """The same fleet and workload with a perfect network, no crashes and no skew."""
        return attrs.evolve(self, loss=0.0, duplicate=0.0, partition_fraction=0.0,
                            crash_fraction=0.0, clock_skew=0.0)


@attrs.frozen
class FleetReport:
    """What one run measured. Equal seeds and configs give equal reports, wall time aside."""

    config: FleetConfig
    events: int  # events published, all sources
    messages: Mapping[str, int]  # messages sent by kind (lost ones included)
    messages_per_event: float  # all messages / events published
    messages_per_host_event: float  # all messages / (events x hosts); 2.0 = push + ack
    partitioned_hosts: int
    #: Simulated seconds from the heal until each partitioned host had durably caught up on
    #: everything published before the heal (None without a partition).
    converge_p50: float | None
    converge_p99: float | None
    converge_max: float | None
    last_submit_at: float  # simulated time of the last submit: when the fleet caught up
    crashes: int
    acked_events_checked: int  # acknowledged events verified in force after restarts
    submits: int  # Replica.submit calls, all hosts
    sim_seconds: float  # simulated time at the end
    wall_seconds: float
    trace_digest: str  # hash of every delivery (time, kind, host, source, seqs)
    view_digest: str  # the one digest every host's view ended with

    def summary(self) -> str:
        def fmt(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f}s"
        return (f"seed={self.config.seed} hosts={self.config.hosts} events={self.events} "
                f"msgs/event={self.messages_per_event:.1f} "
                f"(per host-event {self.messages_per_host_event:.2f}) "
                f"converge p50={fmt(self.converge_p50)} p99={fmt(self.converge_p99)} "
                f"crashes={self.crashes} wall={self.wall_seconds:.2f}s")


def simulate_fleet(config: FleetConfig, *,
                   view_factory: Callable[[], View] = View) -> FleetReport:
    """Run one simulation to completion (its own ``trio.run`` on a ``MockClock``).

    ``view_factory`` makes each replica's view; tests pass a deliberately broken ``View``
    subclass to show that the checks catch a wrong merge.
    """
    clock = trio.testing.MockClock()
    started = time.perf_counter()
    report: FleetReport = trio.run(_Fleet(config, clock, view_factory).run, clock=clock)
    return attrs.evolve(report, wall_seconds=time.perf_counter() - started)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


class _Host:
    """One host: its replica's life cycle and its consumers' volatile state."""

    __slots__ = ("acked", "changed", "index", "partitioned", "pending", "records", "replica",
                 "stop", "view_factory", "wake")

    def __init__(self, index: int, sources: int, view_factory: Callable[[], View]) -> None:
        self.index = index
        self.view_factory = view_factory
        #: The log's records, kept across crashes: what a restart recovers.
        self.records: list[tuple[tuple[Event, ...], Checkpoint | None]] = []
        self.replica: Replica | None = None  # None while down
        self.partitioned = False
        #: Per source: seqs above the cursor already submitted (lost on a crash).
        self.pending: list[set[int]] = [set() for _ in range(sources)]
        #: Per source: the cursor last acknowledged (ghost state of the checks).
        self.acked = [0] * sources
        self.wake = trio.Event()
        self.changed = trio.Event()
        self.stop = False

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Up, down, up ...: each ``wake`` flips the state; ``changed`` reports it done."""
        first = True
        while not self.stop:
            async with open_replica(MemoryLog(self.records), clock=trio.current_time,
                                    view=self.view_factory()) as r:
                self.replica = r
                if first:
                    task_status.started()
                    first = False
                else:
                    self.changed.set()
                self.wake = trio.Event()
                await self.wake.wait()
            self.replica = None
            self.changed.set()
            self.wake = trio.Event()
            await self.wake.wait()

    def running(self) -> Replica | None:
        return self.replica

    async def flip(self) -> None:
        """Crash a running host, or restart a crashed one; returns when done."""
        self.changed = trio.Event()
        self.wake.set()
        await self.changed.wait()


class _Source:
    __slots__ = ("acked", "backoff", "clock", "index", "name", "next_retry", "offset",
                 "stream", "sweeping")

    def __init__(self, index: int, hosts: int, offset: float, ack_wait: float) -> None:
        self.index = index
        self.name = f"src{index}"
        self.offset = offset
        self.clock = HybridClock()
        self.stream: list[Event] = []
        #: Per host: the cursor it acknowledged, when to redeliver next, and the backoff.
        self.acked = [0] * hosts
        self.next_retry = [0.0] * hosts
        self.backoff = [ack_wait] * hosts
        self.sweeping = False


class _Fleet:
    def __init__(self, config: FleetConfig, clock: trio.testing.MockClock,
                 view_factory: Callable[[], View]) -> None:
        self.cfg = config
        self.clock = clock
        self.rng = random.Random(config.seed)
        self.now = 0.0
        self.queue: list[tuple[float, int, int, int, int, int, int]] = []
        self._tie = 0
        self.hosts = [_Host(i, config.sources, view_factory) for i in range(config.hosts)]
        skew = config.clock_skew
        self.sources = [_Source(s, config.hosts, self.rng.uniform(-skew, skew), config.ack_wait)
                        for s in range(config.sources)]
        self.keys: list[Key] = [("vms", f"vm{k:04d}", "compute", "tagsList")
                                for k in range(config.keys)]
        self.messages: Counter[str] = Counter()
        self.trace = hashlib.blake2b(digest_size=16)
        self.submits = 0
        self.crashes = 0
        self.acked_checked = 0
        self.heal_at: float | None = None
        self.heal_targets: list[int] = []
        self.waiting_heal: set[int] = set()
        self.converge_times: list[float] = []
        self.partitioned_hosts = 0
        self.last_submit_at = 0.0

    # -- the event queue -----------------------------------------------------------------
    def _at(self, when: float, kind: int, host: int = -1, source: int = -1,
            lo: int = 0, hi: int = 0) -> None:
        self._tie += 1
        heapq.heappush(self.queue, (when, self._tie, kind, host, source, lo, hi))

    def _send(self, kind: int, host: int, source: int, lo: int = 0, hi: int = 0) -> None:
        """A message between host and source: lost, delayed, maybe duplicated."""
        self.messages[_MESSAGE_KINDS[kind]] += 1
        cfg, rng = self.cfg, self.rng
        if self.hosts[host].partitioned or (cfg.loss and rng.random() < cfg.loss):
            return
        self._at(self._arrival(), kind, host, source, lo, hi)
        if cfg.duplicate and rng.random() < cfg.duplicate:
            self._at(self._arrival(), kind, host, source, lo, hi)

    def _arrival(self) -> float:
        """When a message sent now arrives: ``delay`` plus an exponential ``jitter``."""
        cfg = self.cfg
        if not cfg.jitter:
            return self.now + cfg.delay
        return self.now + cfg.delay + self.rng.expovariate(1.0 / cfg.jitter)

    def _fail(self, message: str) -> AssertionError:
        return AssertionError(f"fleet seed={self.cfg.seed} t={self.now:.3f}: {message} "
                              f"(replay: simulate_fleet({self.cfg!r}))")

    # -- the run ---------------------------------------------------------------------------
    async def run(self) -> FleetReport:
        cfg, rng = self.cfg, self.rng
        for s in range(cfg.sources):
            for _ in range(cfg.events_per_source):
                self._at(rng.uniform(0.0, cfg.publish_window), _PUBLISH, source=s)
        if cfg.partition_fraction and cfg.hosts > 1:
            cut = rng.sample(range(cfg.hosts), max(1, round(cfg.hosts * cfg.partition_fraction)))
            for h in sorted(cut):
                self._at(cfg.partition_start, _PARTITION, host=h)
            self._at(cfg.partition_start + cfg.partition_duration, _HEAL)
        if cfg.crash_fraction:
            for h in sorted(rng.sample(range(cfg.hosts),
                                       max(1, round(cfg.hosts * cfg.crash_fraction)))):
                down = rng.uniform(0.0, cfg.publish_window)
                self._at(down, _CRASH, host=h)
                self._at(down + cfg.crash_downtime * rng.uniform(0.5, 1.5), _RESTART, host=h)

        failure: BaseException | None = None
        report: FleetReport | None = None
        async with trio.open_nursery() as nursery:
            for host in self.hosts:
                await nursery.start(host.run)
            try:
                await self._loop()
                report = self._finish()
            except AssertionError as exc:
                failure = exc
            except Exception as exc:
                failure = self._fail(f"{type(exc).__name__}: {exc}")
                failure.__cause__ = exc
            finally:
                for host in self.hosts:
                    host.stop = True
                nursery.cancel_scope.cancel()
        # Raised out here, not inside the nursery, so callers get the AssertionError itself
        # rather than an ExceptionGroup around it.
        if failure is not None:
            raise failure
        assert report is not None
        return report

    async def _loop(self) -> None:
        queue, clock = self.queue, self.clock
        trace = self.trace
        pack = struct.Struct("<dBiiii").pack
        while queue:
            when, _, kind, h, s, lo, hi = heapq.heappop(queue)
            if when > self.cfg.deadline:
                raise self._fail(f"not caught up by the deadline {self.cfg.deadline}s")
            if when > self.now:
                # Advance trio's clock ourselves: nothing in the fleet sleeps on it.
                clock.jump(when - clock.current_time())
                self.now = when
            if kind == _DATA:
                host = self.hosts[h]
                if host.partitioned or host.replica is None:
                    continue  # cut off, or down: the message is lost
                trace.update(pack(when, kind, h, s, lo, hi))
                await self._receive(host, self.sources[s], lo, hi)
            elif kind in (_ACK, _RESUME):
                if self.hosts[h].partitioned:
                    continue
                trace.update(pack(when, kind, h, s, lo, hi))
                self._on_ack(self.sources[s], h, lo, resume=kind == _RESUME)
            elif kind == _PUBLISH:
                self._publish(self.sources[s])
            elif kind == _SWEEP:
                self._sweep(self.sources[s])
            elif kind == _CRASH:
                await self._crash(self.hosts[h])
            elif kind == _RESTART:
                await self._restart(self.hosts[h])
            elif kind == _PARTITION:
                self.hosts[h].partitioned = True
                self.partitioned_hosts += 1
            elif kind == _HEAL:
                self._heal()

    # -- sources ---------------------------------------------------------------------------
    def _publish(self, src: _Source) -> None:
        cfg, rng = self.cfg, self.rng
        # A coarse, skewed wall clock: versions of different sources collide.
        wall = (self.now + src.offset) // cfg.clock_resolution * cfg.clock_resolution
        version = src.clock.now(EPOCH_MS + int(wall * 1000))
        key = self.keys[rng.randrange(len(self.keys))]
        seq = len(src.stream) + 1
        if rng.random() < cfg.delete_fraction:
            event = Event(src.name, key, version, deleted=True, seq=seq)
        else:
            # Few distinct values, so equal versions often carry equal digests too.
            event = Event(src.name, key, version, {"tag": f"v{rng.randrange(4)}"}, seq=seq)
        src.stream.append(event)
        for h in range(cfg.hosts):
            if src.acked[h] == seq - 1:
                # The host was caught up: give this push one ack_wait before redelivering.
                src.next_retry[h] = self.now + src.backoff[h]
            self._send(_DATA, h, src.index, seq, seq)
        self._arm(src)

    def _arm(self, src: _Source) -> None:
        if not src.sweeping:
            src.sweeping = True
            self._at(self.now + self.cfg.ack_wait, _SWEEP, source=src.index)

    def _sweep(self, src: _Source) -> None:
        """Redeliver to every host whose acknowledgement is overdue; re-arm while any lags."""
        cfg = self.cfg
        last = len(src.stream)
        behind = False
        acked, next_retry, backoff = src.acked, src.next_retry, src.backoff
        for h in range(cfg.hosts):
            if acked[h] < last:
                behind = True
                if self.now >= next_retry[h]:
                    self._redeliver(src, h)
                    next_retry[h] = self.now + backoff[h]
                    backoff[h] = min(backoff[h] * 2.0, cfg.max_backoff)
        src.sweeping = False
        if behind:
            self._arm(src)

    def _redeliver(self, src: _Source, h: int) -> None:
        lo = src.acked[h] + 1
        hi = min(len(src.stream), lo + self.cfg.max_batch - 1)
        if lo <= hi:
            self._send(_DATA, h, src.index, lo, hi)

    def _on_ack(self, src: _Source, h: int, cursor: int, *, resume: bool) -> None:
        if resume:
            # The host restarted: its persisted cursor is where its consumer resumes.
            src.acked[h] = cursor
            src.backoff[h] = self.cfg.ack_wait
            self._redeliver(src, h)
            src.next_retry[h] = self.now + src.backoff[h]
            self._arm(src)
        elif cursor > src.acked[h]:
            src.acked[h] = cursor
            src.backoff[h] = self.cfg.ack_wait
            src.next_retry[h] = self.now + self.cfg.ack_wait

    # -- hosts -----------------------------------------------------------------------------
    async def _receive(self, host: _Host, src: _Source, lo: int, hi: int) -> None:
        replica = host.replica
        assert replica is not None
        s = src.index
        cursor: int = replica.cursor(src.name) or 0
        pending = host.pending[s]
        fresh = [q for q in range(max(lo, cursor + 1), hi + 1) if q not in pending]
        if fresh:
            pending.update(fresh)
            new_cursor = cursor
            while new_cursor + 1 in pending:
                new_cursor += 1
                pending.discard(new_cursor)
            stream = src.stream
            batch = [stream[q - 1] for q in fresh]
            checkpoint = Checkpoint(src.name, new_cursor) if new_cursor > cursor else None
            await replica.submit(batch, checkpoint=checkpoint, source=src.name)
            self.submits += 1
            self.last_submit_at = self.now
            cursor = new_cursor
            if host.index in self.waiting_heal:
                self._check_healed(host)
        # submit returned: durable. Acknowledge (duplicates too: an earlier ack may be lost).
        if cursor > host.acked[s]:
            host.acked[s] = cursor
        self._send(_ACK, host.index, s, cursor)

    async def _crash(self, host: _Host) -> None:
        if host.replica is None:
            return
        await host.flip()
        self.crashes += 1
        for pending in host.pending:
            pending.clear()

    async def _restart(self, host: _Host) -> None:
        if host.replica is not None:
            return
        await host.flip()
        replica = host.running()  # a call: the flip changed host.replica under mypy's nose
        assert replica is not None
        view = replica.view
        for src in self.sources:
            cursor: int = replica.cursor(src.name) or 0
            if cursor < host.acked[src.index]:
                raise self._fail(f"host {host.index} restarted at cursor {cursor} of "
                                 f"{src.name}, but had acknowledged {host.acked[src.index]}")
            for event in src.stream[:host.acked[src.index]]:
                held = view.get(event.key)
                if held is None or order_key(held) < order_key(event):
                    raise self._fail(f"host {host.index} lost acknowledged {event!r} in a "
                                     f"crash; its view holds {held!r}")
                self.acked_checked += 1
            self._send(_RESUME, host.index, src.index, cursor)
        if host.index in self.waiting_heal:
            self._check_healed(host)

    # -- partitions and convergence --------------------------------------------------------
    def _heal(self) -> None:
        self.heal_at = self.now
        self.heal_targets = [len(src.stream) for src in self.sources]
        for host in self.hosts:
            if host.partitioned:
                host.partitioned = False
                self.waiting_heal.add(host.index)
                self._check_healed(host)

    def _check_healed(self, host: _Host) -> None:
        replica = host.replica
        if replica is None or self.heal_at is None:
            return
        for src, target in zip(self.sources, self.heal_targets, strict=True):
            if (replica.cursor(src.name) or 0) < target:
                return
        self.waiting_heal.discard(host.index)
        self.converge_times.append(self.now - self.heal_at)

    def _finish(self) -> FleetReport:
        cfg = self.cfg
        reference = View()
        for src in self.sources:
            for event in src.stream:
                reference.apply(event)
        expected = reference.digest()
        for host in self.hosts:
            replica = host.replica
            if replica is None:
                raise self._fail(f"host {host.index} never restarted")
            for src in self.sources:
                cursor = replica.cursor(src.name) or 0
                if cursor != len(src.stream):
                    raise self._fail(f"host {host.index} stopped at {src.name} seq {cursor} "
                                     f"of {len(src.stream)}")
            got = replica.view.digest()
            if got != expected:
                raise self._fail(f"host {host.index} diverged: view digest {got.hex()} != "
                                 f"reference {expected.hex()}")
        if self.waiting_heal:
            raise self._fail(f"hosts {sorted(self.waiting_heal)} never caught up after the heal")
        events = sum(len(src.stream) for src in self.sources)
        total = sum(self.messages.values())
        healed = self.converge_times
        return FleetReport(
            config=cfg,
            events=events,
            messages=dict(sorted(self.messages.items())),
            messages_per_event=total / events if events else 0.0,
            messages_per_host_event=total / (events * cfg.hosts) if events else 0.0,
            partitioned_hosts=self.partitioned_hosts,
            converge_p50=percentile(healed, 50),
            converge_p99=percentile(healed, 99),
            converge_max=max(healed) if healed else None,
            last_submit_at=self.last_submit_at,
            crashes=self.crashes,
            acked_events_checked=self.acked_checked,
            submits=self.submits,
            sim_seconds=self.now,
            wall_seconds=0.0,
            trace_digest=self.trace.hexdigest(),
            view_digest=expected.hex(),
        )
