"""The simulation and the checker: they run the real code, and they catch a broken log."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from imds_replica._event import Event
from imds_replica._logport import EventLog, MemoryLog
from imds_replica.testing._convergence import ConvergenceError, check_convergence
from imds_replica.testing._sim import (
    Deliver,
    Interrupt,
    Restart,
    Schedule,
    SimHost,
    Simulation,
)

EVENTS = [
    Event("fabric", ("vms", "vm1", "compute", "name"), 1, "web"),
    Event("tags", ("vms", "vm1", "compute", "tagsList"), 3, ["a:b"]),
    Event("fabric", ("vms", "vm1", "compute", "name"), 2, deleted=True),
    Event("fabric", ("vms", "vm2", "compute"), 5, {"name": "db"}),
]


async def test_hosts_follow_their_schedules_on_the_mock_clock(
        autojump_clock: trio.testing.MockClock) -> None:
    schedules = [
        Schedule((Deliver((0, 1)), Interrupt((2, 3)), Restart(), Deliver((3, 2)))),
        Schedule((Deliver((3,)), Deliver((2, 1, 0)), Deliver((0,)))),
    ]
    sim = Simulation(EVENTS, schedules, step_seconds=1.0)
    start = trio.current_time()
    await sim.run()
    assert trio.current_time() - start == pytest.approx(4.0)  # the longer schedule's steps
    first, second = sim.hosts
    assert (first.restarts, second.restarts) == (1, 0)
    assert len(first.views) == 2  # one view per incarnation
    # Before the crash, the interrupted delivery applied nothing.
    assert first.views[0].document(("vms", "vm2")) is None
    assert first.view.digest() == second.view.digest()
    assert [v.digest() for v in sim.recovered] == [first.view.digest()] * 2
    # The lost delivery never reached the log; each delivery is one push per source.
    assert isinstance(first.log, MemoryLog)
    assert [len(batch) for batch, _ in first.log.records] == [1, 1, 2]
    assert first.views[0].statistics().applies == 2


def test_checker_reports_agreement() -> None:
    schedules = [Schedule((Deliver((0, 1, 2, 3)),)),
                 Schedule((Restart(), Deliver((3, 2)), Restart(), Deliver((1, 0, 0))))]
    outcome = check_convergence(EVENTS, schedules)
    assert outcome.replicas == 2
    assert outcome.restarts == 2
    assert outcome.documents[("vms", "vm1")] == {"compute": {"tagsList": ["a:b"]}}
    assert outcome.documents[("vms", "vm2")] == {"compute": {"name": "db"}}


def test_checker_refuses_incomplete_schedules() -> None:
    with pytest.raises(ValueError, match=r"schedule 1 never delivers events \[2, 3\]"):
        check_convergence(EVENTS, [Schedule((Deliver((0, 1, 2, 3)),)),
                                   Schedule((Deliver((0, 1)), Interrupt((2, 3))))])


class ForgetfulLog(MemoryLog):
    """A broken log: reopening it loses the last acknowledged batch."""

    def __init__(self, records: list[Any] | None = None) -> None:
        super().__init__(records[:-1] if records else records)


def forgetful(host: int, previous: EventLog | None) -> EventLog:
    if previous is None:
        return ForgetfulLog()
    assert isinstance(previous, MemoryLog)
    return ForgetfulLog(previous.records)


def test_checker_catches_a_log_that_loses_acknowledged_data() -> None:
    schedules = [Schedule((Deliver((0, 1, 2, 3)),)),
                 Schedule((Deliver((0, 1)), Deliver((2, 3)), Restart()))]
    with pytest.raises(ConvergenceError) as info:
        check_convergence(EVENTS, schedules, make_log=forgetful, final_restart=False)
    message = str(info.value)
    assert "replica 1 (final view) diverged under schedule 1: d[0,1] d[2,3] R" in message
    assert "('vms', 'vm2')" in message
    assert "3: Event('fabric'" in message


def test_checker_checks_recovery_too() -> None:
    # Without restarts in the schedules, only the final reopen exposes the lost batch.
    schedules = [Schedule((Deliver((0, 1, 2, 3)),))]
    with pytest.raises(ConvergenceError, match="view recovered from its log"):
        check_convergence(EVENTS, schedules, make_log=forgetful)


def test_checker_takes_a_custom_delivery_path() -> None:
    delivered: list[int] = []

    async def one_by_one(host: SimHost, batch: Any) -> None:
        assert host.replica is not None
        for event in batch:
            await host.replica.submit([event])
            delivered.append(host.index)

    check_convergence(EVENTS, [Schedule((Deliver((3, 2, 1, 0)),))] * 3, deliver=one_by_one)
    assert sorted(delivered) == [0] * 4 + [1] * 4 + [2] * 4


def test_checker_catches_a_delivery_path_that_drops_events() -> None:
    async def lossy(host: SimHost, batch: Any) -> None:
        assert host.replica is not None
        await host.replica.submit(list(batch)[:-1] if host.index == 2 else list(batch))

    with pytest.raises(ConvergenceError, match="replica 2"):
        check_convergence(EVENTS, [Schedule((Deliver((0, 1, 2, 3)),))] * 3, deliver=lossy)
