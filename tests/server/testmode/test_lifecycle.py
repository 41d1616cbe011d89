from __future__ import annotations

import email.utils

import pytest

from imds_replica import ClientError
from imds_server.testmode import Lifecycle, PlannedEvent

KEY = ("vms", "v1", "scheduledevents", "E1")


def never(vm: str, event_id: str) -> bool:
    return False


def test_scheduled_then_started_at_not_before_then_gone_after_duration() -> None:
    life = Lifecycle()
    life.add(PlannedEvent("v1", "E1", "Reboot", ("vm-1",), duration=600), now=1000.0)
    [(key, value)] = life.step(1000.0, never)
    assert key == KEY
    assert value["EventStatus"] == "Scheduled"
    assert email.utils.parsedate_to_datetime(value["NotBefore"]).timestamp() == 1900.0
    assert life.step(1899.0, never) == []  # nothing changes before NotBefore
    assert life.next_deadline() == 1900.0
    [(_, started)] = life.step(1900.0, never)
    assert (started["EventStatus"], started["NotBefore"]) == ("Started", "")
    assert started["DurationInSeconds"] == 600
    assert life.next_deadline() == 2500.0
    assert life.step(2499.0, never) == []
    assert life.step(2500.0, never) == [(KEY, None)]  # gone: a deletion
    assert len(life) == 0


def test_approval_starts_it_early_and_postpone_moves_not_before() -> None:
    life = Lifecycle()
    life.add(PlannedEvent("v1", "E1", "Freeze", not_before_in=60, duration=5), now=0.0)
    life.step(0.0, never)
    life.postpone("v1", "E1", 30)
    [(_, moved)] = life.step(1.0, never)  # re-published with the new NotBefore
    assert email.utils.parsedate_to_datetime(moved["NotBefore"]).timestamp() == 90.0
    [(_, started)] = life.step(2.0, lambda vm, eid: (vm, eid) == ("v1", "E1"))
    assert started["EventStatus"] == "Started"
    with pytest.raises(ClientError):
        life.postpone("v1", "E1", 30)  # started events do not move
    assert life.step(7.0, never) == [(KEY, None)]


def test_time_scale_compresses_the_plan_but_not_what_is_rendered() -> None:
    life = Lifecycle(time_scale=60)
    life.add(PlannedEvent("v1", "E1", "Reboot", duration=600), now=0.0)  # 900 s notice
    [(_, value)] = life.step(0.0, never)
    assert email.utils.parsedate_to_datetime(value["NotBefore"]).timestamp() == 15.0
    assert life.step(15.0, never)[0][1]["DurationInSeconds"] == 600
    assert life.step(25.0, never) == [(KEY, None)]  # 600 s / 60


def test_unknown_duration_stays_listed_a_default_time() -> None:
    life = Lifecycle()
    life.add(PlannedEvent("v1", "E1", "Preempt"), now=0.0)  # 30 s notice, duration -1
    life.step(0.0, never)
    life.step(30.0, never)
    assert life.step(89.0, never) == []
    assert life.step(90.0, never) == [(KEY, None)]


@pytest.mark.parametrize(("data", "message"), [
    ({"id": "E", "type": "Nap"}, "event type must be one of"),
    ({"type": "Reboot"}, "needs an id and a vm"),
    ({"id": "E", "not-before-in": "soon"}, "must be numbers"),
    ({"id": "E", "when": 1}, "unknown scheduled-event field 'when'"),
])
def test_bad_plans_are_refused(data: dict[str, object], message: str) -> None:
    with pytest.raises(ClientError) as info:
        PlannedEvent.from_mapping(data, vm="v1")
    assert message in info.value.message


def test_a_forgotten_event_changes_nothing_more() -> None:
    life = Lifecycle()
    life.add(PlannedEvent("v1", "E1", "Reboot"), now=0.0)
    assert life.published() == []
    life.step(0.0, never)
    assert life.published() == [("v1", "E1")]
    assert life.forget("v1", "E1")
    assert life.step(10_000.0, never) == []
    assert not life.forget("v1", "E1")
