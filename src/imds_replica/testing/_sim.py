"""A small simulated fleet: real replicas fed by a delivery schedule on trio's clock.

Each simulated host runs the real ``open_replica`` over a log from ``make_log`` (a
``MemoryLog`` by default) with one ``PushSource`` per source name, and follows its own
``Schedule``: deliver a batch, lose a batch in flight, or crash and restart. A restart is a
new replica over the crashed one's durable state (``make_log(host, old_log)``; for the
default, ``MemoryLog(old.records)``), exactly what a real restart recovers. Hosts run
concurrently in one nursery, so under ``MockClock(autojump_threshold=0)`` a whole fleet's
history takes no wall time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from .._event import Event
from .._logport import EventLog, MemoryLog
from .._push import PushSource
from .._replica import Replica, open_replica
from .._view import View


@attrs.frozen
class Deliver:
    """Submit these events (indexes into the event list) as one delivery, and wait for the
    acknowledgement (the batch is durable when it returns)."""

    events: tuple[int, ...]

    def __str__(self) -> str:
        return "d" + _indexes(self.events)


@attrs.frozen
class Interrupt:
    """Start delivering these events but cut the delivery off before it is acknowledged (a
    lost message, a dropped connection): the events may or may not have been applied, so a
    correct sender delivers them again later."""

    events: tuple[int, ...]

    def __str__(self) -> str:
        return "x" + _indexes(self.events)


@attrs.frozen
class Restart:
    """Crash the replica and start a new one over its log's durable state."""

    def __str__(self) -> str:
        return "R"


Step = Deliver | Interrupt | Restart


@attrs.frozen
class Schedule:
    """One replica's delivery history, in order. ``str()`` is a compact form for messages:
    ``d[0,2]`` delivered, ``x[1]`` lost in flight, ``R`` crash and restart."""

    steps: tuple[Step, ...]

    def delivered(self) -> frozenset[int]:
        """Indexes of the events this schedule delivers (acknowledged) at least once."""
        return frozenset(i for s in self.steps if isinstance(s, Deliver) for i in s.events)

    def __str__(self) -> str:
        return " ".join(str(s) for s in self.steps) or "(empty)"


def _indexes(events: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, events)) + "]"


#: ``make_log(host, previous)``: a fresh log for ``host`` when ``previous`` is None, else a
#: new log object over the durable state of ``previous`` (which belonged to a crashed replica).
LogFactory = Callable[[int, EventLog | None], EventLog]
#: ``deliver(host, batch)``: hand one batch to a running host; return once acknowledged.
Deliverer = Callable[["SimHost", Sequence[Event]], Awaitable[None]]


def memory_logs(host: int, previous: EventLog | None) -> EventLog:
    """The default ``LogFactory``: a ``MemoryLog``, reopened over the same records."""
    if previous is None:
        return MemoryLog()
    if not isinstance(previous, MemoryLog):
        raise TypeError("memory_logs can only reopen a MemoryLog")
    return MemoryLog(previous.records)


async def push_delivery(host: SimHost, batch: Sequence[Event]) -> None:
    """The default ``Deliverer``: each source's events through that source's ``PushSource``
    (one push per source, in the order they first appear in the batch)."""
    by_source: dict[str, list[Event]] = {}
    for event in batch:
        by_source.setdefault(event.source, []).append(event)
    for name, events in by_source.items():
        await host.pushers[name].push(events)


@attrs.define
class SimHost:
    """One simulated host: its current log, replica and push sources (replaced on restart)."""

    index: int
    log: EventLog
    replica: Replica | None = None
    pushers: dict[str, PushSource] = attrs.field(factory=dict)
    restarts: int = 0
    #: Every view this host had, one per incarnation; the last is the final one.
    views: list[View] = attrs.field(factory=list)

    @property
    def view(self) -> View:
        return self.views[-1]


class Simulation:
    """Run ``schedules[i]`` on host ``i`` over ``events``; see the module docstring.

    ``step_seconds`` of trio time pass before every step, so liveliness and anything else on
    the replica's clock see time move. After ``run``, ``hosts[i].view`` is host ``i``'s
    final view; with ``final_restart`` each host is restarted once more at the end and
    ``recovered[i]`` is the view its log recovered.
    """

    def __init__(self, events: Sequence[Event], schedules: Sequence[Schedule], *,
                 make_log: LogFactory = memory_logs, deliver: Deliverer = push_delivery,
                 source_names: Sequence[str] | None = None, step_seconds: float = 0.25,
                 final_restart: bool = True, view_factory: Callable[[], View] = View,
                 replica_options: dict[str, Any] | None = None) -> None:
        self.events = tuple(events)
        self.schedules = tuple(schedules)
        self.make_log = make_log
        self.deliver = deliver
        names = source_names if source_names is not None else [e.source for e in self.events]
        self.source_names = tuple(dict.fromkeys(names))
        self.step_seconds = step_seconds
        self.final_restart = final_restart
        self.view_factory = view_factory
        self.replica_options = dict(replica_options or {})
        self.hosts: list[SimHost] = []
        self.recovered: list[View] = []

    async def run(self) -> None:
        self.hosts = [SimHost(i, self.make_log(i, None)) for i in range(len(self.schedules))]
        async with trio.open_nursery() as nursery:
            for host, schedule in zip(self.hosts, self.schedules, strict=True):
                nursery.start_soon(self._run_host, host, schedule)
        if self.final_restart:
            self.recovered = [await self._recover(host) for host in self.hosts]

    async def _run_host(self, host: SimHost, schedule: Schedule) -> None:
        steps = list(schedule.steps)
        while True:
            view = self.view_factory()
            host.views.append(view)
            host.pushers = {name: PushSource(name) for name in self.source_names}
            async with open_replica(host.log, sources=list(host.pushers.values()),
                                    clock=trio.current_time, view=view,
                                    **self.replica_options) as replica:
                host.replica = replica
                while steps:
                    step = steps.pop(0)
                    await trio.sleep(self.step_seconds)
                    if isinstance(step, Restart):
                        break
                    batch = [self.events[i] for i in step.events]
                    if isinstance(step, Interrupt):
                        # Cut off at the first checkpoint inside the delivery: with a
                        # MemoryLog nothing is applied, with another log it may be; either
                        # way no acknowledgement reaches the sender.
                        with trio.move_on_at(trio.current_time()):
                            await self.deliver(host, batch)
                        continue
                    await self.deliver(host, batch)
                else:
                    host.replica = None
                    return
            host.replica = None
            host.restarts += 1
            host.log = self.make_log(host.index, host.log)

    async def _recover(self, host: SimHost) -> View:
        host.log = self.make_log(host.index, host.log)
        view = self.view_factory()
        async with open_replica(host.log, clock=trio.current_time, view=view,
                                **self.replica_options):
            pass
        return view
