"""The source-adapter port: how data from the outside reaches a replica.

A source is an object with a ``name`` (the ``source`` of every event it produces), a
liveliness ``policy`` and an async ``run(sink, task_status=...)`` that the replica starts in
its nursery. Through the ``SourceSink`` it submits batches (durable on return) together
with its resume cursor, reports contact and failures, and reads back its last persisted
cursor after a restart. New adapters are one module plus a three-line test subclassing
``imds_replica.testing.SourceContract``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ._errors import ValidationError
from ._event import Event
from ._liveliness import LivelinessPolicy
from ._logport import Checkpoint

if TYPE_CHECKING:
    from ._replica import Replica, SubmitResult
    from ._view import View

_UNSET: Any = object()


class Source(Protocol):
    name: str
    policy: LivelinessPolicy

    async def run(self, sink: SourceSink, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        ...


def claimed_source(event: object) -> object:
    """The ``source`` an event or its wire form claims (None when it claims none)."""
    if isinstance(event, Event):
        return event.source
    return event.get("source") if isinstance(event, Mapping) else None


class SourceSink:
    """A source's handle on its replica; one per source."""

    def __init__(self, replica: Replica, name: str) -> None:
        self._replica = replica
        self.name = name

    @property
    def cursor(self) -> Any:
        """The last cursor persisted for this source (None if never)."""
        return self._replica.cursor(self.name)

    @property
    def view(self) -> View:
        """Read-only use: sources may diff against what the replica holds."""
        return self._replica.view

    def now(self) -> float:
        return self._replica.now()

    async def submit(
        self, events: Sequence[Event | Mapping[str, Any]], cursor: Any = _UNSET
    ) -> SubmitResult:
        """Submit a batch of this source's events, with the cursor to resume after it."""
        for i, event in enumerate(events):
            claimed = claimed_source(event)
            if claimed != self.name:
                raise ValidationError(
                    f"source: {claimed!r} submitted through source {self.name!r}", index=i
                )
        # The contact travels with the cursor: after a restart, liveliness knows when this
        # source last confirmed the data it replayed (``Recovery.contacts``).
        checkpoint = None if cursor is _UNSET else Checkpoint(self.name, cursor,
                                                              contact=self.now())
        return await self._replica.submit(events, checkpoint=checkpoint, source=self.name)

    def contact(self) -> None:
        self._replica.liveliness.contact(self.name, self.now())

    def failure(self, error: str) -> None:
        self._replica.liveliness.failure(self.name, self.now(), error)
