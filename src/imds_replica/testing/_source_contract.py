"""``SourceContract``: the conformance tests of the source-adapter port.

Subclass it once per adapter and implement three hooks:

- ``make_source(tmp_path)``: a new adapter named ``SOURCE`` over the outside world of this
  test (the same directory, endpoint, ...). It is called again for a restart, so the state
  outside the adapter — files, a server, an agent's queue — must live on the test instance
  or under ``tmp_path``, not in the adapter.
- ``stage(spec)``: change the outside world so that it says ``spec`` (a mapping of register
  key ``("vms", VMID, SECTION, FIELD)`` → value, or ``DELETED``), without asking the adapter
  to deliver it. It may be called while no replica runs (changes made during a restart).
- ``settle(source)`` (async): make the running adapter do one round of its work now (scan,
  poll, push what is queued) and return once it has delivered what was staged.

Every test runs in real time (an adapter may need real sockets) under ``open_replica`` with
a ``MemoryLog``; a restart is a new replica over the same log records and a new adapter.
The tests are async: run them with pytest-trio in ``trio_mode`` (or mark the subclass
``pytest.mark.trio``).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import trio

from .._event import SOURCE_RE, Key
from .._liveliness import LivelinessPolicy, SourceState
from .._logport import Checkpoint, MemoryLog
from .._replica import Replica, open_replica
from .._source import Source
from .._view import View


class _Deleted:
    def __repr__(self) -> str:
        return "DELETED"


#: The value in a spec that asks for a register's deletion.
DELETED: Any = _Deleted()

Spec = Mapping[Key, Any]
Records = list[tuple[tuple[Any, ...], Checkpoint | None]]


class SourceContract:
    """The contract of the ``Source`` port (see ``imds_replica._source``)."""

    #: The name every source made by ``make_source`` must carry.
    SOURCE = "contract"
    DELETED = DELETED
    #: Does the adapter persist a cursor with what it delivers? (A push source only does
    #: when its agent hands one.)
    has_cursor = True
    #: Seconds any one contract test may take.
    time_limit = 20.0

    # -- hooks -----------------------------------------------------------------------------
    def make_source(self, tmp_path: Path) -> Source:
        raise NotImplementedError

    def stage(self, spec: Spec) -> None:
        raise NotImplementedError

    async def settle(self, source: Source) -> None:
        raise NotImplementedError

    async def feed(self, source: Source, spec: Spec) -> None:
        """Make the running ``source`` deliver ``spec`` (``stage`` then ``settle``)."""
        self.stage(spec)
        await self.settle(source)

    def open(self, records: Records, source: Source) -> AbstractAsyncContextManager[Replica]:
        """A replica over ``records`` running ``source`` (override to add options)."""
        return open_replica(MemoryLog(records), sources=[source])

    # -- helpers ---------------------------------------------------------------------------
    def check_view(self, view: View, expected: Spec) -> None:
        for key, value in expected.items():
            register = view.get(key)
            if value is DELETED:
                assert register is None or register.deleted, f"{key} still holds {register}"
            else:
                assert register is not None, f"{key} missing from the view"
                assert not register.deleted, f"{key} deleted, expected {value!r}"
                assert register.source == self.SOURCE, f"{key} held by {register.source}"
                assert register.value == value, f"{key}: {register.value!r} != {value!r}"

    def events_logged(self, records: Records) -> int:
        return sum(1 for batch, _ in records for e in batch if e.source == self.SOURCE)

    # -- the contract ----------------------------------------------------------------------
    async def test_identity(self, tmp_path: Path) -> None:
        source = self.make_source(tmp_path)
        assert source.name == self.SOURCE
        assert SOURCE_RE.match(source.name)
        assert isinstance(source.policy, LivelinessPolicy)

    async def test_delivered_data_reaches_the_view(self, tmp_path: Path) -> None:
        spec: Spec = {("vms", "vm-1", "compute", "name"): "one",
                ("vms", "vm-1", "compute", "tagsList"): [{"name": "a", "value": "b"}],
                ("vms", "vm-2", "network", "interface"): {"mac": "00-0D-3A"}}
        with trio.fail_after(self.time_limit):
            source = self.make_source(tmp_path)
            async with self.open([], source) as replica:
                await self.feed(source, spec)
                self.check_view(replica.view, spec)
                assert replica.view.document(("vms", "vm-1")) == {"compute": {
                    "name": "one", "tagsList": [{"name": "a", "value": "b"}]}}

    async def test_updates_and_deletions(self, tmp_path: Path) -> None:
        k1: Key = ("vms", "vm-1", "compute", "name")
        k2: Key = ("vms", "vm-1", "compute", "zone")
        with trio.fail_after(self.time_limit):
            source = self.make_source(tmp_path)
            async with self.open([], source) as replica:
                await self.feed(source, {k1: "one", k2: "1"})
                spec: Spec = {k1: "uno", k2: DELETED}
                await self.feed(source, spec)
                self.check_view(replica.view, spec)
                assert replica.view.document(("vms", "vm-1")) == {"compute": {"name": "uno"}}

    async def test_reports_contact(self, tmp_path: Path) -> None:
        with trio.fail_after(self.time_limit):
            source = self.make_source(tmp_path)
            async with self.open([], source) as replica:
                one: Spec = {("vms", "vm-1", "compute", "name"): "one"}
                await self.feed(source, one)
                status = replica.liveliness.status(self.SOURCE, replica.now())
                assert status.last_contact is not None
                assert status.state is SourceState.LIVE
                assert status.last_error is None
                assert status.policy == source.policy

    async def test_cursor_survives_restart(self, tmp_path: Path) -> None:
        records: Records = []
        with trio.fail_after(self.time_limit):
            source = self.make_source(tmp_path)
            async with self.open(records, source) as replica:
                one: Spec = {("vms", "vm-1", "compute", "name"): "one"}
                await self.feed(source, one)
                cursor = replica.cursor(self.SOURCE)
            if self.has_cursor:
                assert cursor is not None
            async with self.open(records, self.make_source(tmp_path)) as replica:
                assert replica.cursor(self.SOURCE) == cursor

    async def test_restart_neither_duplicates_nor_loses(self, tmp_path: Path) -> None:
        records: Records = []
        first: Spec = {("vms", "vm-1", "compute", "name"): "one",
                 ("vms", "vm-2", "compute", "name"): "two"}
        with trio.fail_after(self.time_limit):
            source = self.make_source(tmp_path)
            async with self.open(records, source) as replica:
                await self.feed(source, first)
                digest = replica.view.digest()
            logged = self.events_logged(records)
            assert logged >= len(first)

            # Nothing changed while down: the restarted adapter resumes and sends nothing.
            source = self.make_source(tmp_path)
            async with self.open(records, source) as replica:
                await self.settle(source)
                assert replica.view.digest() == digest
                self.check_view(replica.view, first)
            assert self.events_logged(records) == logged, "a restart re-delivered old data"

            # Changed while down: picked up after the restart, the rest kept.
            down: Spec = {("vms", "vm-1", "compute", "name"): "uno",
                    ("vms", "vm-2", "compute", "name"): DELETED,
                    ("vms", "vm-3", "compute", "name"): "three"}
            self.stage(down)
            source = self.make_source(tmp_path)
            async with self.open(records, source) as replica:
                await self.settle(source)
                self.check_view(replica.view, down)
                after: Spec = {("vms", "vm-3", "network", "mac"): "00-11"}
                await self.feed(source, after)
                self.check_view(replica.view, {**down, **after})
                digest = replica.view.digest()

            # The log alone rebuilds exactly that view.
            async with self.open(records, self.make_source(tmp_path)) as replica:
                assert replica.view.digest() == digest
