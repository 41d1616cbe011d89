"""``PushSource``: the host agent hands events to the replica in process."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio

from ._event import Event
from ._liveliness import LivelinessPolicy
from ._source import SourceSink

if TYPE_CHECKING:
    from ._replica import SubmitResult


class PushSource:
    """A source whose owner calls ``await push(events)``; returns once they are durable.

    Its policy defaults to ``LivelinessPolicy.pushed()``: data the host agent must deliver
    before it applies is live by construction.
    """

    def __init__(self, name: str, *, policy: LivelinessPolicy | None = None) -> None:
        self.name = name
        self.policy = policy or LivelinessPolicy.pushed()
        self._sink: SourceSink | None = None
        self._ready = trio.Event()

    async def run(self, sink: SourceSink, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self._sink = sink
        self._ready.set()
        task_status.started()
        await trio.sleep_forever()

    @property
    def cursor(self) -> Any:
        """The cursor persisted with the last push that gave one (for resuming an agent)."""
        return None if self._sink is None else self._sink.cursor

    async def push(self, events: Sequence[Event], *, cursor: Any = None) -> SubmitResult:
        await self._ready.wait()
        assert self._sink is not None
        if cursor is None:
            return await self._sink.submit(events)
        return await self._sink.submit(events, cursor)
