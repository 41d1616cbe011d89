"""The event-log port, and its in-memory implementation.

A log is run by the replica in its nursery: ``run`` first recovers the durable contents into
the given view, reports a ``Recovery`` through ``task_status.started``, then serves
``append`` calls until cancelled. ``append`` returns only when the batch is durable *and*
applied to the view, and the log applies batches in log order — so the view always equals
replaying the log, which is what makes snapshots and restarts exact.

Implementations: ``MemoryLog`` here (tests, simulations, embedders that do not persist) and
the durable ``FileLog``. Both pass ``imds_replica.testing.EventLogContract``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs
import trio

from ._event import Event
from ._view import View


@attrs.frozen
class Checkpoint:
    """A source's resume cursor (any JSON value), persisted with the batch it follows."""

    source: str
    cursor: Any


@attrs.frozen
class Recovery:
    """What ``run`` found on start."""

    checkpoints: Mapping[str, Any]
    batches: int
    events: int
    seconds: float
    notes: tuple[str, ...] = ()  # e.g. "truncated a torn tail of 12 bytes in 00000003.seg"


@attrs.frozen
class MemoryLogStatistics:
    batches: int
    events: int
    checkpoints: int


class EventLog(Protocol):
    """The port every log implements (see the module docstring for the contract)."""

    async def run(self, view: View, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        ...

    async def append(
        self, events: Sequence[Event], checkpoint: Checkpoint | None = None
    ) -> tuple[bool, ...]:
        """Durable and applied on return; one flag per event: did it change the view."""
        ...

    def statistics(self) -> Any:
        ...


class MemoryLog:
    """A log that lives as long as its object: a crash is simulated by reusing ``records``.

    Pass the ``records`` list of one instance to a new one to model a restart that keeps
    everything acknowledged (an in-memory append is durable the moment it returns).
    """

    def __init__(self, records: list[tuple[tuple[Event, ...], Checkpoint | None]] | None = None):
        self.records = records if records is not None else []
        self._view: View | None = None

    async def run(self, view: View, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        started = trio.current_time()
        checkpoints: dict[str, Any] = {}
        events = 0
        for batch, checkpoint in self.records:
            view.apply_batch(batch)
            events += len(batch)
            if checkpoint is not None:
                checkpoints[checkpoint.source] = checkpoint.cursor
        self._view = view
        task_status.started(Recovery(checkpoints, len(self.records), events,
                                     trio.current_time() - started))
        await trio.sleep_forever()

    async def append(
        self, events: Sequence[Event], checkpoint: Checkpoint | None = None
    ) -> tuple[bool, ...]:
        if self._view is None:
            raise RuntimeError("MemoryLog.append before run() recovered")
        await trio.lowlevel.checkpoint()
        batch = tuple(events)
        self.records.append((batch, checkpoint))
        return self._view.apply_batch(batch)

    def statistics(self) -> MemoryLogStatistics:
        return MemoryLogStatistics(
            batches=len(self.records),
            events=sum(len(b) for b, _ in self.records),
            checkpoints=sum(c is not None for _, c in self.records),
        )
