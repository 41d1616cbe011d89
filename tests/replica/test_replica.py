from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from imds_replica._errors import StorageError, ValidationError
from imds_replica._event import DEFAULT_MAX_VALUE_BYTES, Event
from imds_replica._liveliness import LivelinessPolicy, SourceState
from imds_replica._log import FileLog
from imds_replica._log._segment import lock_directory
from imds_replica._logport import Checkpoint, MemoryLog
from imds_replica._push import PushSource
from imds_replica._replica import SubmitResult, open_replica
from imds_replica._view import View

VM = ("vms", "vm1")


def ev(i: int, source: str = "fabric", **kw: Any) -> Event:
    return Event(source, (*VM, "k", str(i)), i, kw.pop("value", i), **kw)


async def test_submit_logs_applies_and_counts(autojump_clock: trio.testing.MockClock) -> None:
    log = MemoryLog()
    async with open_replica(log, clock=trio.current_time) as replica:
        result = await replica.submit([ev(1), ev(2), ev(2)])
        assert result == SubmitResult(events=3, changed=2)
        assert log.records[-1][0] == (ev(1), ev(2), ev(2))
        assert replica.view.document(VM) == {"k": {"1": 1, "2": 2}}
        result = await replica.submit([ev(1, value="older loses", source="a")])
        assert result.changed == 0
        stats = replica.statistics()
        assert (stats.batches_submitted, stats.batches_rejected) == (2, 0)
        assert stats.events_applied == {"fabric": 2}
        assert stats.events_received == {"fabric": 3, "a": 1}
        assert stats.view.applies == 4
        assert stats.log.batches == 2


async def test_bad_batch_is_rejected_whole(autojump_clock: trio.testing.MockClock) -> None:
    log = MemoryLog()
    async with open_replica(log) as replica:
        good = ev(1).to_dict()
        bad = {**good, "key": ["vms", ""]}
        with pytest.raises(ValidationError, match=r"^event 1: key\[1\]") as info:
            await replica.submit([good, bad, good])
        assert info.value.index == 1
        assert log.records == []
        assert len(replica.view) == 0
        with pytest.raises(ValidationError, match="must be a list"):
            await replica.submit(42)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="must be a list"):
            await replica.submit(iter([good]))  # type: ignore[arg-type]
        stats = replica.statistics()
        assert stats.batches_rejected == 3
        assert stats.batches_submitted == 0
        assert stats.events_rejected == {"fabric": 3, "unknown": 0}


async def test_keys_shorter_than_a_document_are_refused() -> None:
    # Finding 5: ("vms",) wrote into every VM's document, but only ("vms",) was notified.
    async with open_replica() as replica:
        good = ev(1).to_dict()
        with pytest.raises(ValidationError,
                           match=r"^event 1: key: \['vms'\] has 1 part\(s\); keys need at "
                                 r"least 2 \(the document depth"):
            await replica.submit([good, {**good, "key": ["vms"]}])
        assert len(replica.view) == 0


async def test_value_limit_is_configurable() -> None:
    big = Event("s", ("k", "v"), 1, "x" * DEFAULT_MAX_VALUE_BYTES)
    async with open_replica() as replica:
        with pytest.raises(ValidationError, match="bytes"):
            await replica.submit([big])
    async with open_replica(max_value_bytes=2 * DEFAULT_MAX_VALUE_BYTES) as replica:
        assert (await replica.submit([big])).changed == 1


async def test_restart_recovers_view_and_cursor(autojump_clock: trio.testing.MockClock) -> None:
    log = MemoryLog()
    push = PushSource("fabric")
    async with open_replica(log, sources=[push]) as replica:
        await push.push([ev(1), ev(2)], cursor={"offset": 2})
        await push.push([ev(3)])  # no cursor: the persisted one stays
        assert push.cursor == {"offset": 2}
        digest = replica.view.digest()
    push2 = PushSource("fabric")
    async with open_replica(MemoryLog(log.records), sources=[push2]) as replica:
        assert replica.view.digest() == digest
        assert push2.cursor == {"offset": 2}
        assert replica.cursor("fabric") == {"offset": 2}
        assert replica.recovery.batches == 2
        assert replica.recovery.events == 3


async def test_push_source_refuses_foreign_events() -> None:
    push = PushSource("fabric")
    async with open_replica(sources=[push]) as replica:
        with pytest.raises(ValidationError, match="event 0: source: 'tags'"):
            await push.push([ev(1, source="tags")])
        assert len(replica.view) == 0


async def test_liveliness_follows_submissions_on_the_replica_clock(
        autojump_clock: trio.testing.MockClock) -> None:
    policy = LivelinessPolicy(interval=5.0, stale_after=10.0, expired_after=20.0)
    push = PushSource("tags", policy=policy)
    async with open_replica(sources=[push], clock=trio.current_time) as replica:
        start = trio.current_time()
        assert replica.liveliness.state("tags", replica.now()) is SourceState.UNKNOWN
        await push.push([ev(1, source="tags")])
        await trio.sleep(12)
        status = replica.liveliness.status("tags", replica.now())
        assert status.state is SourceState.STALE
        assert status.last_change == start
        await push.push([ev(1, source="tags")])  # a duplicate: contact, not change
        status = replica.liveliness.status("tags", replica.now())
        assert status.state is SourceState.LIVE
        assert status.last_change == start
        assert status.last_contact == start + 12


async def test_change_waiters_wake_on_their_document(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_replica() as replica:
        woken: list[str] = []

        async def wait_doc(name: str, doc: tuple[str, ...]) -> None:
            await replica.wait_document_change(doc)
            woken.append(name)

        async def wait_any() -> None:
            await replica.wait_any_change()
            woken.append("any")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_doc, "vm1-a", VM)
            nursery.start_soon(wait_doc, "vm1-b", VM)
            nursery.start_soon(wait_doc, "vm2", ("vms", "vm2"))
            nursery.start_soon(wait_any)
            await trio.testing.wait_all_tasks_blocked()
            await replica.submit([ev(1)])
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(woken) == ["any", "vm1-a", "vm1-b"]
            await replica.submit([ev(1)])  # no change: nobody more wakes
            await trio.testing.wait_all_tasks_blocked()
            assert len(woken) == 3
            await replica.submit([Event("s", ("vms", "vm2", "x"), 1, 1)])
        assert sorted(woken) == ["any", "vm1-a", "vm1-b", "vm2"]


async def test_checkpoint_persists_with_submit() -> None:
    log = MemoryLog()
    async with open_replica(log) as replica:
        await replica.submit([ev(1)], checkpoint=Checkpoint("fabric", 7))
        assert replica.cursor("fabric") == 7
    assert log.records[0][1] == Checkpoint("fabric", 7)


async def test_given_view_and_policy_are_used() -> None:
    view = View()
    policy = LivelinessPolicy(interval=1.0, stale_after=2.0, expired_after=3.0)
    push = PushSource("fabric")  # its own policy is "pushed"; the configured one wins
    async with open_replica(view=view, sources=[push], policies={"fabric": policy}) as replica:
        assert replica.view is view
        assert replica.liveliness.status("fabric", 0.0).policy == policy


async def test_sink_refuses_wire_form_events_of_another_source() -> None:
    push = PushSource("fabric")
    async with open_replica(sources=[push]) as replica:
        sink = push._sink
        assert sink is not None
        with pytest.raises(ValidationError, match="event 0: source: 'tags' submitted through"):
            await sink.submit([{"source": "tags", "key": ["a"], "version": 1, "value": 1}])
        await sink.submit([{"source": "fabric", "key": ["a", "b"], "version": 1, "value": 1}])
        assert replica.view.document(("a", "b")) == 1


async def test_start_up_failures_raise_the_error_itself(tmp_path: Path) -> None:
    """Finding 16: ``except StorageError`` catches a locked or foreign data directory."""
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(StorageError, match="not an imds-replica log directory"):
        async with open_replica(FileLog(tmp_path / "foreign")):
            pass
    async with open_replica(FileLog(tmp_path / "log", fsync="none")):
        pass
    fd = lock_directory(tmp_path / "log")
    try:
        with pytest.raises(StorageError, match="in use by another process"):
            async with open_replica(FileLog(tmp_path / "log", fsync="none")):
                pass
    finally:
        os.close(fd)
    # An error raised inside the block comes out as itself too.
    with pytest.raises(KeyError):
        async with open_replica():
            raise KeyError("mine")


# -- 11.15: liveliness after a restart ----------------------------------------------------

class _CursorSource:
    """A source that submits one batch with a cursor at start, then idles."""

    def __init__(self, name: str, policy: LivelinessPolicy, submit: bool = True) -> None:
        self.name, self.policy, self.submit = name, policy, submit

    async def run(self, sink: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self.submit:
            await sink.submit([Event(self.name, (*VM, self.name), 1, "x")], "etag-1")
        task_status.started()
        await trio.sleep_forever()


POLL = LivelinessPolicy(interval=10.0, stale_after=30.0, expired_after=100.0)


async def test_sources_submit_their_contact_with_their_cursor() -> None:
    log = MemoryLog()
    async with open_replica(log, sources=[_CursorSource("poll", POLL)],
                            clock=lambda: 500.0):
        pass
    assert log.records[0][1] == Checkpoint("poll", "etag-1", contact=500.0)


async def test_every_source_whose_data_was_replayed_shows_its_real_state() -> None:
    """Before: every source was ``unknown`` after a restart though its data was replayed, and
    sources the restarted process does not run were not listed at all."""
    log = MemoryLog()
    async with open_replica(log, sources=[_CursorSource("poll", POLL)],
                            policies={"fabric": LivelinessPolicy.pushed()},
                            clock=lambda: 1000.0) as replica:
        await replica.submit([ev(1, source="fabric"), ev(2, source="ops")])
    # Restarted 10 s later, the poll source has not spoken yet (it will at its next poll).
    async with open_replica(log, sources=[_CursorSource("poll", POLL, submit=False)],
                            policies={"fabric": LivelinessPolicy.pushed()},
                            clock=lambda: 1010.0) as replica:
        # Submitted without a cursor, "fabric" and "ops" persisted their contact with the
        # batch (before session 3 "ops", counter-versioned, was unknown here).
        assert replica.recovery.contacts == {"poll": 1000.0, "fabric": 1000.0, "ops": 1000.0}
        snapshot = replica.liveliness.snapshot(1010.0)
        assert set(snapshot) == {"fabric", "ops", "poll"}
        assert snapshot["poll"].state is SourceState.LIVE
        assert snapshot["poll"].last_contact == 1000.0
        assert snapshot["poll"].newest_version == 1
        assert snapshot["fabric"].state is SourceState.LIVE  # pushed: live by construction
        assert snapshot["ops"].state is SourceState.LIVE
        assert snapshot["ops"].last_contact == 1000.0
        assert replica.liveliness.state("poll", 1030.0) is SourceState.STALE
        assert replica.liveliness.state("ops", 1000.0 + 179.0) is SourceState.LIVE
        assert replica.liveliness.state("ops", 1000.0 + 180.0) is SourceState.STALE


async def test_a_source_that_never_speaks_ages_from_the_replica_start() -> None:
    now = [100.0]
    async with open_replica(sources=[_CursorSource("poll", POLL, submit=False)],
                            clock=lambda: now[0]) as replica:
        assert replica.liveliness.state("poll", 129.0) is SourceState.UNKNOWN
        assert replica.liveliness.state("poll", 130.0) is SourceState.STALE
        assert replica.liveliness.state("poll", 200.0) is SourceState.EXPIRED


async def test_liveliness_is_updated_before_the_view_changes() -> None:
    """A watcher woken by a change reads liveliness at once: the batch's contact must be in
    it by then (before, it was recorded after the append returned)."""
    seen: list[float | None] = []
    async with open_replica(clock=lambda: 42.0) as replica:
        replica.view.subscribe(
            lambda doc: seen.append(replica.liveliness.status("tags", 42.0).last_contact))
        await replica.submit([ev(1, source="tags")])
    assert seen == [42.0]


async def test_a_checkpoint_keeps_its_contact_whatever_its_cursor() -> None:
    """The contact rides on the checkpoint: whatever ``submit`` does to a cursor (a tuple
    normalised to a list, say), the contact must reach the log and come back."""
    log = MemoryLog()
    async with open_replica(log, clock=lambda: 7.0) as replica:
        await replica.submit([ev(1)], checkpoint=Checkpoint("fabric", ("a", 1), contact=5.0))
        await replica.submit([ev(2)], checkpoint=Checkpoint("fabric", {"p": [1]}, contact=6.0))
    assert [cp.contact for _, cp in log.records if cp is not None] == [5.0, 6.0]
    async with open_replica(log, clock=lambda: 8.0) as replica:
        assert replica.recovery.contacts == {"fabric": 6.0}
