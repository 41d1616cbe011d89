"""Conformance test classes for the ports: subclass one per implementation.

``EventLogContract``: implement ``new_log(tmp_path)`` (a fresh, empty log) and
``reopen(log, tmp_path)`` (a new instance over the same durable state, as after a restart).
Every test here must pass for every log implementation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from .._event import Event
from .._logport import Checkpoint, EventLog, Recovery
from .._view import View


async def _started(nursery: trio.Nursery, log: EventLog, view: View) -> Recovery:
    recovery: Recovery = await nursery.start(log.run, view)
    return recovery


class EventLogContract:
    """The contract of the ``EventLog`` port (see ``imds_replica._logport``)."""

    def new_log(self, tmp_path: Path) -> EventLog:
        raise NotImplementedError

    def reopen(self, log: EventLog, tmp_path: Path) -> EventLog:
        raise NotImplementedError

    async def _restart(self, log: EventLog, tmp_path: Path) -> tuple[View, Recovery, Any]:
        view = View()
        log2 = self.reopen(log, tmp_path)
        async with trio.open_nursery() as nursery:
            recovery = await _started(nursery, log2, view)
            nursery.cancel_scope.cancel()
        return view, recovery, log2

    async def test_empty_log_recovers_nothing(self, tmp_path: Path) -> None:
        view = View()
        async with trio.open_nursery() as nursery:
            recovery = await _started(nursery, self.new_log(tmp_path), view)
            nursery.cancel_scope.cancel()
        assert len(view) == 0
        assert recovery.events == 0
        assert dict(recovery.checkpoints) == {}

    async def test_append_applies_in_order_and_reports_changes(self, tmp_path: Path) -> None:
        view = View()
        log = self.new_log(tmp_path)
        a1 = Event("src", ("k",), 1, "one")
        a2 = Event("src", ("k",), 2, "two")
        async with trio.open_nursery() as nursery:
            await _started(nursery, log, view)
            assert await log.append([a2]) == (True,)
            assert await log.append([a1, a2]) == (False, False)
            nursery.cancel_scope.cancel()
        assert view.document(("k",)) == "two"

    async def test_restart_recovers_identical_view_and_checkpoints(self, tmp_path: Path) -> None:
        view = View()
        log = self.new_log(tmp_path)
        batches = [
            [Event("fabric", ("vms", f"vm{i}", "compute", "name"), i + 1, f"n{i}")
             for i in range(5)],
            [Event("tags", ("vms", "vm1", "compute", "tags"), 7, "a:b"),
             Event("fabric", ("vms", "vm2", "compute", "name"), 9, None, deleted=True)],
            [Event("fabric", ("vms", "vm3", "compute", "name"), 1, "older-loses")],
        ]
        async with trio.open_nursery() as nursery:
            await _started(nursery, log, view)
            await log.append(batches[0], Checkpoint("fabric", 5))
            await log.append(batches[1], Checkpoint("tags", "etag-1"))
            await log.append(batches[2], Checkpoint("fabric", 6))
            nursery.cancel_scope.cancel()
        recovered, recovery, _ = await self._restart(log, tmp_path)
        assert recovered.digest() == view.digest()
        assert recovered.document(("vms",)) == view.document(("vms",))
        assert dict(recovery.checkpoints) == {"fabric": 6, "tags": "etag-1"}
        assert recovery.events >= 1

    async def test_restart_recovers_each_sources_last_persisted_contact(
            self, tmp_path: Path) -> None:
        log = self.new_log(tmp_path)
        async with trio.open_nursery() as nursery:
            await _started(nursery, log, View())
            await log.append([Event("poll", ("a",), 1, 1)], Checkpoint("poll", "e1", 12.5))
            await log.append([Event("poll", ("a",), 2, 2)], Checkpoint("poll", "e2"))
            await log.append([], Checkpoint("tags", {"p": 1}, contact=20.0))
            nursery.cancel_scope.cancel()
        _, recovery, _ = await self._restart(log, tmp_path)
        # A checkpoint without a contact keeps the one persisted before it.
        assert dict(recovery.checkpoints) == {"poll": "e2", "tags": {"p": 1}}
        assert dict(recovery.contacts) == {"poll": 12.5, "tags": 20.0}

    async def test_restart_twice_appending_between(self, tmp_path: Path) -> None:
        log = self.new_log(tmp_path)
        async with trio.open_nursery() as nursery:
            await _started(nursery, log, View())
            await log.append([Event("s", ("a",), 1, 1)])
            nursery.cancel_scope.cancel()
        view = View()
        log2 = self.reopen(log, tmp_path)
        async with trio.open_nursery() as nursery:
            await _started(nursery, log2, view)
            await log2.append([Event("s", ("b",), 1, 2)], Checkpoint("s", {"pos": 2}))
            nursery.cancel_scope.cancel()
        recovered, recovery, _ = await self._restart(log2, tmp_path)
        assert recovered.digest() == view.digest()
        assert recovered.document(("a",)) == 1
        assert recovered.document(("b",)) == 2
        assert dict(recovery.checkpoints) == {"s": {"pos": 2}}

    async def test_concurrent_appends_all_durable(self, tmp_path: Path) -> None:
        log = self.new_log(tmp_path)
        view = View()
        async with trio.open_nursery() as nursery:
            await _started(nursery, log, view)
            async with trio.open_nursery() as writers:
                for w in range(16):
                    async def write(w: int = w) -> None:
                        for i in range(10):
                            await log.append([Event("s", ("w", str(w), str(i)), i, w)])
                    writers.start_soon(write)
            nursery.cancel_scope.cancel()
        assert len(view) == 160
        recovered, _, _ = await self._restart(log, tmp_path)
        assert recovered.digest() == view.digest()

    async def test_append_nowait_receipts_complete_in_order(self, tmp_path: Path) -> None:
        log = self.new_log(tmp_path)
        view = View()
        a1 = Event("src", ("k",), 1, "one")
        a2 = Event("src", ("k",), 2, "two")
        async with trio.open_nursery() as nursery:
            await _started(nursery, log, view)
            receipts = [log.append_nowait([a2], Checkpoint("src", 1)),
                        log.append_nowait([a1, Event("src", ("j",), 1, "j")]),
                        log.append_nowait((a2,), Checkpoint("src", 3))]
            assert await receipts[-1].wait() == (False,)
            # Done in queue order: the newest being done covers every earlier one.
            assert all(r.done for r in receipts)
            assert [r.result() for r in receipts] == [(True,), (False, True), (False,)]
            assert await receipts[0].wait() == (True,)  # waiting again is allowed
            nursery.cancel_scope.cancel()
        assert view.document(("k",)) == "two"
        recovered, recovery, _ = await self._restart(log, tmp_path)
        assert recovered.digest() == view.digest()
        assert dict(recovery.checkpoints) == {"src": 3}

    async def test_append_and_append_nowait_share_one_order(self, tmp_path: Path) -> None:
        log = self.new_log(tmp_path)
        view = View()
        seen: list[Any] = []
        # Listeners run once the whole group commit is applied (so a listener sees the
        # group's end state, and hears of each change in log order).
        view.subscribe(lambda doc_key: seen.append((doc_key, view.document(doc_key))))
        async with trio.open_nursery() as nursery:
            await _started(nursery, log, view)
            first = log.append_nowait([Event("s", ("k",), 1, "a")])
            assert await log.append([Event("s", ("k",), 2, "b")]) == (True,)
            assert first.done  # queued before the append that returned
            assert view.document(("k",)) == "b"
            third = log.append_nowait([Event("s", ("k",), 3, "c")])
            assert await third.wait() == (True,)
            nursery.cancel_scope.cancel()
        assert first.result() == (True,)
        assert [doc for doc, _ in seen] == [("k",)] * 3
        assert seen[-1] == (("k",), "c")
        assert [value for _, value in seen] in (["a", "b", "c"], ["b", "b", "c"])

    async def test_append_nowait_keeps_what_was_queued(self, tmp_path: Path) -> None:
        """The caller's list may change after the call: the log keeps what it was given."""
        log = self.new_log(tmp_path)
        view = View()
        batch = [Event("s", ("k",), 1, "kept")]
        async with trio.open_nursery() as nursery:
            await _started(nursery, log, view)
            receipt = log.append_nowait(batch)
            batch[0] = Event("s", ("k",), 9, "changed afterwards")
            await receipt.wait()
            nursery.cancel_scope.cancel()
        assert view.document(("k",)) == "kept"
        recovered, _, _ = await self._restart(log, tmp_path)
        assert recovered.document(("k",)) == "kept"

    async def test_concurrent_pipelined_submitters_all_durable(self, tmp_path: Path) -> None:
        log = self.new_log(tmp_path)
        view = View()
        async with trio.open_nursery() as nursery:
            await _started(nursery, log, view)
            async with trio.open_nursery() as writers:
                for w in range(8):
                    async def write(w: int = w) -> None:
                        for start in range(0, 40, 8):  # windows of 8 batches in flight
                            receipts = [log.append_nowait(
                                [Event("s", ("w", str(w), str(i)), i, w)],
                                Checkpoint(f"w{w}", i)) for i in range(start, start + 8)]
                            await receipts[-1].wait()
                            assert all(r.result() == (True,) for r in receipts)
                    writers.start_soon(write)
            nursery.cancel_scope.cancel()
        assert len(view) == 320
        recovered, recovery, _ = await self._restart(log, tmp_path)
        assert recovered.digest() == view.digest()
        assert dict(recovery.checkpoints) == {f"w{w}": 39 for w in range(8)}
