"""The ``Replica``: the trio shell that owns a log, a view, liveliness and the sources.

It only moves data and schedules: validation, merge, view and liveliness are the sans-I/O
core; durability is the log's. ``submit`` validates a whole batch first (nothing of a bad
batch reaches the log), appends it (the log applies it to the view in log order and returns
once it is durable), then updates liveliness and wakes whoever waits on a changed document.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence, Sized
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from ._errors import ValidationError
from ._event import DEFAULT_MAX_VALUE_BYTES, Event, Key, validate_batch
from ._liveliness import LivelinessPolicy, LivelinessTracker
from ._logport import (
    Checkpoint,
    EventLog,
    MemoryLog,
    Recovery,
    contact_checkpoint,
    validate_checkpoint,
)
from ._source import Source, SourceSink, claimed_source
from ._view import View, ViewStatistics

#: Seconds between two contacts the replica persists for a source without a cursor.
CONTACT_EVERY = 1.0


@attrs.frozen
class SubmitResult:
    events: int  # events in the batch
    changed: int  # how many changed the view (the rest lost the merge or were duplicates)


@attrs.frozen
class ReplicaStatistics:
    view: ViewStatistics
    log: Any
    batches_submitted: int
    batches_rejected: int
    events_applied: Mapping[str, int]  # per source: events that changed the view
    events_received: Mapping[str, int]  # per source: events accepted into the log
    events_rejected: Mapping[str, int]  # per source (as claimed): events in rejected batches
    recovery: Recovery


class Replica:
    """Use ``open_replica``; the constructor is for that function and for tests."""

    def __init__(self, *, view: View, log: EventLog, liveliness: LivelinessTracker,
                 recovery: Recovery, clock: Callable[[], float], max_value_bytes: int) -> None:
        self.view = view
        self.log = log
        self.liveliness = liveliness
        self.recovery = recovery
        self._clock = clock
        self._max_value_bytes = max_value_bytes
        self._cursors: dict[str, Any] = dict(recovery.checkpoints)
        #: Per source: when the replica last queued a contact of its own (``_with_contacts``).
        self._persisted_contact: dict[str, float] = dict(recovery.contacts)
        #: The names of the sources ``open_replica`` runs (their data is theirs alone).
        self.source_names: tuple[str, ...] = ()
        self._waiters: dict[Key, trio.Event] = {}
        self._any_change = trio.Event()
        self._submitted = 0
        self._rejected = 0
        self._applied: Counter[str] = Counter()
        self._received: Counter[str] = Counter()
        self._rejected_events: Counter[str] = Counter()
        view.subscribe(self._on_change)

    def now(self) -> float:
        """The replica's clock (wall seconds by default; a MockClock in simulations)."""
        return self._clock()

    def cursor(self, source: str) -> Any:
        return self._cursors.get(source)

    async def submit(self, events: Sequence[Event | Mapping[str, Any]], *,
                     checkpoint: Checkpoint | None = None,
                     source: str | None = None) -> SubmitResult:
        """Validate, log durably, apply. A bad batch raises ``ValidationError`` (naming the
        event's index and the reason) and nothing of it is applied or logged; so does a
        checkpoint whose cursor is not a JSON value (see ``validate_checkpoint``)."""
        try:
            batch = validate_batch(events, max_value_bytes=self._max_value_bytes,
                                   min_key_parts=self.view.document_depth)
            if checkpoint is not None:
                checkpoint = validate_checkpoint(checkpoint, max_bytes=self._max_value_bytes)
        except ValidationError:
            self._rejected += 1
            # ``events`` may be anything a caller passed (validation rejected it): count
            # only what has a length, so the ValidationError is what propagates.
            size = len(events) if isinstance(events, Sized) else 0
            self._rejected_events[source or _claimed_source(events)] += size
            raise
        # Contact first: the append applies the batch and wakes watchers of its documents
        # before it returns here, and they read freshness at once (the source did speak,
        # whether or not the write then fails).
        now = self.now()
        contact = self.liveliness.contact
        speakers = {event.source for event in batch} | ({source} if source else set())
        for src in speakers:
            contact(src, now)
        changed = await self.log.append(batch, self._with_contacts(
            checkpoint, speakers, now))
        self._submitted += 1
        # Liveliness once per source of the batch, not once per event: per source, the
        # greatest version that changed the view (-1: none did, which is contact only).
        newest: dict[str, int] = {}
        for event, did in zip(batch, changed, strict=True):
            src = event.source
            self._received[src] += 1
            best = newest.get(src, -1)
            if did:
                self._applied[src] += 1
                best = max(best, event.version)
            newest[src] = best
        now = self.now()
        for src, version in newest.items():
            if version >= 0:
                self.liveliness.applied(src, now, version)
        if checkpoint is not None:
            self._cursors[checkpoint.source] = checkpoint.cursor
        n_changed = sum(changed)
        return SubmitResult(len(batch), n_changed)

    def _with_contacts(self, checkpoint: Checkpoint | None, speakers: set[str],
                       now: float) -> Checkpoint | None:
        """The checkpoint to append with a batch. A batch submitted without one (e.g.
        through ``POST /events``) carries its source's contact instead, and queues a
        contact of their own for its other sources first: a counter-versioned source
        posted so has nothing else that dates its data after a restart. At most one a
        second per source: a re-pushed unchanged state then adds one small record a second
        to the log, not one per push. (A source with a cursor persists its contact with
        it: ``SourceSink.submit``.)"""
        if checkpoint is not None:
            return checkpoint
        due = sorted(src for src in speakers
                     if now - self._persisted_contact.get(src, -1e300) >= CONTACT_EVERY)
        if not due:
            return None
        for src in due:
            self._persisted_contact[src] = now
        checkpoint = contact_checkpoint(due.pop(), now)  # one rides with the batch
        for src in due:  # the others go first, in the same group commit
            try:
                self.log.append_nowait((), contact_checkpoint(src, now))
            except trio.WouldBlock:  # a full queue: best effort, a later push persists it
                self._persisted_contact.pop(src, None)
        return checkpoint

    # -- change notification ---------------------------------------------------------------
    def _on_change(self, doc_key: Key) -> None:
        waiter = self._waiters.pop(doc_key, None)
        if waiter is not None:
            waiter.set()
        self._any_change.set()
        self._any_change = trio.Event()

    async def wait_document_change(self, doc_key: Key) -> None:
        """Return after the next change to document ``doc_key`` (e.g. ``("vms", VMID)``).

        Parks without polling; cheap for many waiters on one document (they share an Event).
        """
        doc_key = tuple(doc_key)
        waiter = self._waiters.get(doc_key)
        if waiter is None:
            waiter = self._waiters[doc_key] = trio.Event()
        await waiter.wait()

    async def wait_any_change(self) -> None:
        await self._any_change.wait()

    def statistics(self) -> ReplicaStatistics:
        return ReplicaStatistics(
            view=self.view.statistics(), log=self.log.statistics(),
            batches_submitted=self._submitted, batches_rejected=self._rejected,
            events_applied=dict(self._applied), events_received=dict(self._received),
            events_rejected=dict(self._rejected_events), recovery=self.recovery,
        )


def _claimed_source(events: object) -> str:
    """The source the first event of a rejected batch claims, for the rejection counters."""
    try:
        src = claimed_source(events[0])  # type: ignore[index]
    except Exception:  # not indexable, empty: whatever a caller passed
        return "unknown"
    return src if isinstance(src, str) and len(src) <= 64 else "unknown"


@asynccontextmanager
async def open_replica(
    log: EventLog | None = None,
    *,
    sources: Sequence[Source] = (),
    policies: Mapping[str, LivelinessPolicy] | None = None,
    default_policy: LivelinessPolicy | None = None,
    clock: Callable[[], float] = time.time,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    view: View | None = None,
) -> AsyncIterator[Replica]:
    """Recover the log into a view, start the sources, and yield the running replica.

    On exit the sources and the log task are cancelled; every batch whose ``submit``
    returned is durable. ``clock`` gives liveliness its ``now`` (wall seconds by default).
    """
    log = log if log is not None else MemoryLog()
    view = view if view is not None else View()
    # Sources never heard from age from here; every policy is known before ``recover``.
    tracker = LivelinessTracker(policies, default=default_policy, started=clock())
    for source in sources:
        if policies is None or source.name not in policies:
            tracker.set_policy(source.name, source.policy)
    try:
        async with trio.open_nursery() as nursery:
            recovery: Recovery = await nursery.start(log.run, view)
            tracker.recover(newest=view.newest_versions(),
                            contacts=recovery.contacts)
            replica = Replica(view=view, log=log, liveliness=tracker, recovery=recovery,
                              clock=clock, max_value_bytes=max_value_bytes)
            replica.source_names = tuple(source.name for source in sources)
            for source in sources:
                await nursery.start(source.run, SourceSink(replica, source.name))
            try:
                yield replica
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # One thing failed (a locked or foreign data directory, a source's start, the
        # caller's block): raise that error itself, so ``except StorageError`` works.
        # Several at once stay a group: none of them is "the" error.
        leaves = _leaves(group)
        if len(leaves) != 1:
            raise
        leaf = leaves[0]
        raise leaf from leaf.__cause__


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
