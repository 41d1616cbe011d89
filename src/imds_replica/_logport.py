"""The event-log port, and its in-memory implementation.

A log is run by the replica in its nursery: ``run`` first recovers the durable contents into
the given view, reports a ``Recovery`` through ``task_status.started``, then serves
``append`` calls until cancelled. ``append`` returns only when the batch is durable *and*
applied to the view, and the log applies batches in log order — so the view always equals
replaying the log, which is what makes snapshots and restarts exact.

Implementations: ``MemoryLog`` here (tests, simulations, embedders that do not persist) and
the durable ``FileLog``. Both pass ``imds_replica.testing.EventLogContract``.

``append_nowait`` is the pipelined form: it queues the batch without waiting and returns a
``Receipt``; the batch is durable and applied once the receipt is done. A submitter that
keeps a window of batches in flight parks once per window instead of once per batch, which
is what one-event batches need to get near the disk's speed. Receipts complete in queue
order, so waiting on the newest one covers every earlier one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs
import trio
from outcome import Error, Value

from ._codec import encode, normalize
from ._errors import ValidationError
from ._event import Event
from ._view import View


@attrs.frozen
class Checkpoint:
    """A source's resume cursor (any JSON value), persisted with the batch it follows.

    ``Replica.submit`` validates the cursor like an event value (``validate_checkpoint``):
    what it accepts comes back equal after a restart.

    ``contact``: when the source last made contact (the replica's clock, seconds), persisted
    with the data it confirms so that liveliness survives a restart (``Recovery.contacts``);
    ``None`` (the default) records none and is encoded exactly as before.
    """

    source: str
    cursor: Any
    contact: float | None = None


def validate_checkpoint(checkpoint: object, *, max_bytes: int) -> Checkpoint:
    """The checkpoint with its cursor normalised like an event value (tuples become lists,
    ``str``/``int`` subclasses their plain type), or ``ValidationError`` saying what is
    wrong: a cursor must be JSON (string object keys, finite numbers, no bytes or sets),
    encodable, and at most ``max_bytes`` encoded."""
    if not isinstance(checkpoint, Checkpoint):
        raise ValidationError(f"checkpoint: expected a Checkpoint, got "
                              f"{type(checkpoint).__name__}")
    if not isinstance(checkpoint.source, str) or not checkpoint.source:
        raise ValidationError("checkpoint source: must be a non-empty string")
    cursor = normalize(checkpoint.cursor, what="checkpoint cursor")
    try:
        size = len(encode(cursor))
    except (ValueError, TypeError) as exc:  # e.g. a lone surrogate in a string
        raise ValidationError(f"checkpoint cursor: not encodable ({exc})") from None
    if size > max_bytes:
        raise ValidationError(f"checkpoint cursor: {size} bytes encoded, at most "
                              f"{max_bytes} allowed")
    if cursor is checkpoint.cursor or (type(cursor) is type(checkpoint.cursor)
                                       and cursor == checkpoint.cursor):
        return checkpoint
    return attrs.evolve(checkpoint, cursor=cursor)  # every other field (contact) kept


@attrs.frozen
class Recovery:
    """What ``run`` found on start."""

    checkpoints: Mapping[str, Any]
    batches: int
    events: int
    seconds: float
    notes: tuple[str, ...] = ()  # e.g. "truncated a torn tail of 12 bytes in 00000003.seg"
    #: The last contact persisted per source (``Checkpoint.contact``).
    contacts: Mapping[str, float] = attrs.field(factory=dict)


#: Logs keep a checkpoint's contact in their table of cursors under this prefix plus the
#: source's name (never a source name: those start with [a-z0-9]), so that snapshots,
#: compaction and repair carry it like any cursor; ``split_checkpoints`` takes it out.
CONTACT_PREFIX = "@contact:"


def contact_checkpoint(source: str, contact: float) -> Checkpoint:
    """A contact persisted without a cursor (a batch submitted with none, e.g. through
    ``POST /events``): the checkpoint of the table entry itself, source
    ``CONTACT_PREFIX + source`` and the contact as its cursor. Every log stores it like any
    cursor, so it needs nothing new from a log or its format, leaves the source's cursor
    alone, and ``split_checkpoints`` returns it as that source's contact."""
    return Checkpoint(CONTACT_PREFIX + source, float(contact))


def keep_checkpoint(table: dict[str, Any], checkpoint: Checkpoint) -> None:
    """Record ``checkpoint`` in a log's table of cursors (and contacts)."""
    table[checkpoint.source] = checkpoint.cursor
    if checkpoint.contact is not None:
        table[CONTACT_PREFIX + checkpoint.source] = checkpoint.contact


def split_checkpoints(table: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """A log's table of cursors as ``(cursors, contacts)`` per source."""
    cursors: dict[str, Any] = {}
    contacts: dict[str, float] = {}
    for name, value in table.items():
        if name.startswith(CONTACT_PREFIX):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                contacts[name[len(CONTACT_PREFIX):]] = float(value)
        else:
            cursors[name] = value
    return cursors, contacts


@attrs.frozen
class MemoryLogStatistics:
    batches: int
    events: int
    checkpoints: int


class Receipt:
    """The answer to one ``append_nowait``: done once the batch is durable and applied.

    ``wait()`` returns the batch's flags (did each event change the view) or raises what
    failed it. Receipts complete in queue order (a log applies batches in the order they
    were queued), so when one is done every receipt queued before it on the same log is
    done too. Nobody has to wait: a batch whose receipt is dropped is still written.
    """

    __slots__ = ("_done", "_error", "_result", "_start", "_stop", "_task")

    def __init__(self) -> None:
        self._done = False
        self._result: Any = ()
        # ``_finish_slice``: the result is ``_result[_start:_stop]`` (``_stop`` < 0: all of it)
        self._start = 0
        self._stop = -1
        self._error: BaseException | None = None
        self._task: trio.lowlevel.Task | None = None  # the task parked in wait(), if any

    @property
    def done(self) -> bool:
        """Durable and applied (or failed): ``result()`` answers without waiting."""
        return self._done

    def result(self) -> tuple[bool, ...]:
        """The flags of a done receipt (raises what failed the batch)."""
        if not self._done:
            raise RuntimeError("Receipt.result() before the batch was written; await wait()")
        if self._error is not None:
            raise self._error
        if self._stop >= 0:
            flags: tuple[bool, ...] = self._result[self._start:self._stop]
            return flags
        return self._result  # type: ignore[no-any-return]

    async def wait(self) -> tuple[bool, ...]:
        """Park until the batch is durable and applied; return its flags.

        Cancelling the wait does not withdraw the batch: it is still written and applied,
        only this task is not told. One task at a time may wait on a receipt.
        """
        if self._done:
            await trio.lowlevel.checkpoint()
            return self.result()
        if self._task is not None:
            raise RuntimeError("another task is already waiting on this receipt")
        self._task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        # The appender reschedules the waiter directly: no trio.Event/parking lot per
        # batch, which was a good part of the per-batch cost with hundreds of submitters.
        result: tuple[bool, ...] = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def _finish(self, result: Any = (), error: BaseException | None = None) -> None:
        """Complete the receipt (idempotent); called by the log, from the trio thread."""
        if self._done:
            return
        self._done = True
        self._result, self._error = result, error
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task, Value(result) if error is None else Error(error))

    def _finish_slice(self, flags: tuple[bool, ...], start: int, stop: int) -> None:
        """``_finish(flags[start:stop])``, sliced only if someone asks: a group commit
        finishes thousands of receipts that nobody waits on, and every tuple it allocates
        and keeps alive until the receipt is dropped makes the cyclic collector work."""
        if self._task is not None:  # a waiter takes its slice now
            self._finish(flags[start:stop])
        elif not self._done:
            self._done = True
            self._result, self._start, self._stop = flags, start, stop


class EventLog(Protocol):
    """The port every log implements (see the module docstring for the contract)."""

    async def run(self, view: View, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        ...

    async def append(
        self, events: Sequence[Event], checkpoint: Checkpoint | None = None
    ) -> tuple[bool, ...]:
        """Durable and applied on return; one flag per event: did it change the view."""
        ...

    def append_nowait(
        self, events: Sequence[Event], checkpoint: Checkpoint | None = None
    ) -> Receipt:
        """Queue without waiting; the receipt is done once durable and applied."""
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
                keep_checkpoint(checkpoints, checkpoint)
        self._view = view
        cursors, contacts = split_checkpoints(checkpoints)
        task_status.started(Recovery(cursors, len(self.records), events,
                                     trio.current_time() - started, contacts=contacts))
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

    def append_nowait(
        self, events: Sequence[Event], checkpoint: Checkpoint | None = None
    ) -> Receipt:
        # Durable the moment it is recorded: applied now, in call order with ``append``.
        if self._view is None:
            raise RuntimeError("MemoryLog.append_nowait before run() recovered")
        batch = tuple(events)
        self.records.append((batch, checkpoint))
        receipt = Receipt()
        receipt._finish(self._view.apply_batch(batch))
        return receipt

    def statistics(self) -> MemoryLogStatistics:
        return MemoryLogStatistics(
            batches=len(self.records),
            events=sum(len(b) for b, _ in self.records),
            checkpoints=sum(c is not None for _, c in self.records),
        )
