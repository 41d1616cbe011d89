"""``PushSource`` against the source contract, plus its own behaviour."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from imds_replica._errors import ValidationError
from imds_replica._event import Event
from imds_replica._liveliness import LivelinessPolicy, SourceState
from imds_replica._logport import MemoryLog
from imds_replica._push import PushSource
from imds_replica._replica import open_replica
from imds_replica._source import Source
from imds_replica.testing._source_contract import DELETED, SourceContract, Spec


class TestPushSource(SourceContract):
    """The host agent's queue lives on the test, so it outlasts a restarted replica."""

    @pytest.fixture(autouse=True)
    def _agent(self) -> None:
        self.queue: list[Event] = []
        self.version = 0

    def make_source(self, tmp_path: Path) -> Source:
        return PushSource(self.SOURCE)

    def stage(self, spec: Spec) -> None:
        for key, value in spec.items():
            self.version += 1
            self.queue.append(Event(self.SOURCE, key, self.version, None, deleted=True)
                              if value is DELETED else Event(self.SOURCE, key, self.version, value))

    async def settle(self, source: Source) -> None:
        assert isinstance(source, PushSource)
        queue, self.queue = self.queue, []
        if queue:
            await source.push(queue, cursor=self.version)


async def test_push_is_durable_and_resumable() -> None:
    records: list[Any] = []
    source = PushSource("agent")
    async with open_replica(MemoryLog(records), sources=[source]) as replica:
        result = await source.push([Event("agent", ("vms", "a", "compute", "x"), 1, 1)],
                                   cursor={"seq": 1})
        assert (result.events, result.changed) == (1, 1)
        assert source.cursor == {"seq": 1}
        assert replica.liveliness.state("agent", replica.now()) is SourceState.LIVE
    again = PushSource("agent")
    async with open_replica(MemoryLog(records), sources=[again]):
        assert again.cursor == {"seq": 1}


async def test_push_refuses_events_of_another_source_whole() -> None:
    source = PushSource("agent")
    async with open_replica(sources=[source]) as replica:
        batch = [Event("agent", ("k", "a"), 1, 1), Event("other", ("k2", "a"), 1, 2)]
        with pytest.raises(ValidationError, match="event 1: source"):
            await source.push(batch)
        assert len(replica.view) == 0


async def test_push_default_policy_is_always_live() -> None:
    assert PushSource("agent").policy == LivelinessPolicy.pushed()


async def test_push_before_start_waits_for_the_replica() -> None:
    source = PushSource("agent")
    pushed = trio.Event()

    async def early() -> None:
        await source.push([Event("agent", ("k", "a"), 1, "v")])
        pushed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(early)
        await trio.testing.wait_all_tasks_blocked()
        assert not pushed.is_set()
        async with open_replica(sources=[source]) as replica:
            await pushed.wait()
            assert replica.view.document(("k", "a")) == "v"
