"""The strategies generate what they promise: valid events, and schedules that cover every
kind of delivery (so the convergence property really exercises them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from imds_replica._event import Event
from imds_replica.testing._sim import Deliver, Interrupt, Restart, Schedule
from imds_replica.testing._strategies import (
    any_events,
    convergence_cases,
    events,
    schedules,
    tight_events,
)

T = TypeVar("T")


class _Found(Exception):
    pass


def find(strategy: st.SearchStrategy[T], predicate: Callable[[T], Any]) -> T:
    """The first generated example satisfying ``predicate`` (no shrinking, no database:
    this only asks whether the strategy reaches such examples at all, and quickly)."""
    found: list[T] = []

    @settings(max_examples=1000, phases=[Phase.generate], database=None)
    @given(strategy)
    def search(example: T) -> None:
        if predicate(example):
            found.append(example)
            raise _Found

    try:
        search()
    except _Found:
        return found[0]
    raise AssertionError("the strategy never produced such an example")


@given(st.integers(0, 12).flatmap(lambda n: st.tuples(st.just(n), schedules(n))))
def test_schedule_delivers_every_event_and_redelivers_drops(case: tuple[int, Schedule]) -> None:
    n, schedule = case
    assert schedule.delivered() == frozenset(range(n))
    for pos, step in enumerate(schedule.steps):
        if isinstance(step, Interrupt):
            later = Schedule(schedule.steps[pos + 1:]).delivered()
            assert set(step.events) <= later, "a lost delivery is delivered again later"
        if isinstance(step, Deliver | Interrupt):
            assert step.events


def test_schedules_cover_every_delivery_kind() -> None:
    def kinds(s: Schedule) -> set[type]:
        return {type(step) for step in s.steps}

    find(schedules(5), lambda s: kinds(s) == {Deliver, Interrupt, Restart})
    find(schedules(5), lambda s: any(isinstance(x, Deliver) and len(set(x.events)) > 1
                                     and list(x.events) != sorted(x.events) for x in s.steps))
    dup = find(schedules(4), lambda s: sum(len(x.events) for x in s.steps
                                           if isinstance(x, Deliver)) > 4)
    assert dup.delivered() == frozenset(range(4))
    assert find(schedules(3, restarts=False, interrupts=False, duplicates=False),
                lambda s: True).steps  # still a valid schedule
    assert str(Schedule((Deliver((0, 2)), Interrupt((1,)), Restart(), Deliver((1,))))) == \
        "d[0,2] x[1] R d[1]"


def test_event_strategies_produce_collisions() -> None:
    find(st.lists(events(), min_size=2),
         lambda evs: any(a.key == b.key and a.version == b.version and a.source != b.source
                         for a in evs for b in evs))
    find(st.lists(tight_events(), min_size=2),
         lambda evs: any(a.key == b.key and a.version == b.version and a.source == b.source
                         and a.deleted != b.deleted for a in evs for b in evs))
    find(convergence_cases(), lambda c: any(
        a.key == b.key and a.version == b.version and a.source == b.source and a != b
        for a in c[0] for b in c[0]))
    find(st.lists(events(), min_size=2),
         lambda evs: any(len(b.key) > len(a.key) and b.key[:len(a.key)] == a.key
                         for a in evs for b in evs))


@given(any_events())
def test_any_events_are_valid_and_varied(event: Event) -> None:
    assert Event.from_dict(event.to_dict()) == event


def test_any_events_reach_the_limits() -> None:
    find(any_events(), lambda e: len(e.key) >= 8)
    find(any_events(), lambda e: e.deleted and e.seq is not None)
    find(any_events(), lambda e: isinstance(e.value, dict) and len(e.value) > 1)
