from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imds_replica._clock import COUNTER_BITS, HybridClock, hlc_version, version_wall_ms
from imds_replica._event import MAX_VERSION

WALL = st.integers(0, 2**40)  # ms since the epoch, far beyond any real date


@given(WALL, st.integers(0, 2**COUNTER_BITS - 1))
def test_version_encodes_wall_time(wall_ms: int, counter: int) -> None:
    v = hlc_version(wall_ms, counter)
    assert version_wall_ms(v) == wall_ms
    assert v & (2**COUNTER_BITS - 1) == counter


def test_version_rejects_bad_parts() -> None:
    for args in ((-1, 0), (0, -1), (0, 2**COUNTER_BITS)):
        with pytest.raises(ValueError, match="wall_ms"):
            hlc_version(*args)


@given(st.lists(st.one_of(st.tuples(st.just("now"), st.integers(-(2**20), 2**40)),
                          st.tuples(st.just("observe"), st.integers(0, 2**50))),
                min_size=1, max_size=60))
def test_versions_strictly_increase_under_clock_steps(ops: list[tuple[str, int]]) -> None:
    """Whatever the wall clock does (steps back, stands still, goes negative) and whatever
    is observed, each issued version exceeds every version issued or observed before."""
    clock = HybridClock()
    highest = -1
    for op, arg in ops:
        if op == "observe":
            clock.observe(arg, 2**40)  # a wall time past every observed version: in bound
            highest = max(highest, arg)
        else:
            v = clock.now(arg)
            assert v > highest
            assert version_wall_ms(v) >= arg  # never behind the wall clock it was given
            highest = v
        assert clock.last == max(highest, 0)


def test_backward_step_continues_counter() -> None:
    clock = HybridClock()
    first = clock.now(10_000)
    assert first == hlc_version(10_000)
    # The wall clock steps back a whole second: versions carry on from the largest time.
    assert clock.now(9_000) == hlc_version(10_000, 1)
    assert clock.now(9_500) == hlc_version(10_000, 2)
    # Once the wall clock passes the old time again, versions follow it.
    assert clock.now(10_001) == hlc_version(10_001)


def test_counter_overflow_carries_into_time() -> None:
    clock = HybridClock(hlc_version(5, 2**COUNTER_BITS - 1))
    assert clock.now(5) == hlc_version(6, 0)


def test_observe_then_now_exceeds_remote() -> None:
    clock = HybridClock()
    assert clock.observe(hlc_version(50_000, 7), 1_000)
    assert clock.now(1_000) == hlc_version(50_000, 8)
    assert clock.observe(5, 1_000)  # older: ignored
    assert clock.last == hlc_version(50_000, 8)


def test_restore_from_last() -> None:
    old = HybridClock()
    issued = old.now(123_456)
    assert HybridClock(old.last).now(0) > issued


def test_exhaustion_raises_and_leaves_clock_usable() -> None:
    clock = HybridClock(MAX_VERSION)
    with pytest.raises(OverflowError):
        clock.now(0)
    assert clock.last == MAX_VERSION  # not corrupted past the version space
    clock = HybridClock()
    with pytest.raises(OverflowError):
        clock.now(2**48)  # a wall time beyond what the encoding holds
    assert clock.last == 0
    assert clock.now(1) == hlc_version(1)


# -- the drift bound (finding 11.9) -----------------------------------------------------------

def test_a_version_at_the_end_of_the_version_space_is_not_observed() -> None:
    """One far-future event (2**63-1) must not exhaust the clock: ``now`` keeps working."""
    clock = HybridClock(max_drift_ms=60_000)
    assert clock.observe(MAX_VERSION, 1_000_000) is False
    v = clock.now(1_000_000)
    assert version_wall_ms(v) <= 1_000_000 + 60_000
    assert clock.beyond_drift == 1
    assert clock.furthest_refused == MAX_VERSION


def test_a_far_future_version_drags_local_versions_at_most_by_the_drift() -> None:
    clock = HybridClock(max_drift_ms=5_000)
    day = 86_400_000
    assert not clock.observe(hlc_version(1_000_000 + day), 1_000_000)
    later = clock.now(1_000_100)
    assert version_wall_ms(later) <= 1_000_000 + 5_000
    assert clock.beyond_drift == 1
    # Within the bound, a remote version is observed exactly as before.
    fresh = HybridClock(max_drift_ms=5_000)
    assert fresh.observe(hlc_version(1_004_000, 3), 1_000_100)
    assert fresh.now(1_000_200) == hlc_version(1_004_000, 4)
    assert fresh.beyond_drift == 0


def test_drift_bound_must_be_positive_or_none() -> None:
    with pytest.raises(ValueError, match="max_drift_ms"):
        HybridClock(max_drift_ms=0)
    unbounded = HybridClock(max_drift_ms=None)
    assert unbounded.observe(hlc_version(2**40), 0)
    assert unbounded.last == hlc_version(2**40)


@given(st.lists(st.tuples(st.integers(0, MAX_VERSION), st.integers(0, 2**42)), max_size=40),
       st.integers(0, 2**42))
def test_no_observed_version_makes_now_fail(observed: list[tuple[int, int]],
                                            wall_ms: int) -> None:
    """Whatever remote versions arrive, at whatever local time, ``now`` never raises and
    never runs further ahead of the largest local time than the drift bound."""
    clock = HybridClock(max_drift_ms=60_000)
    top = wall_ms
    for version, at in observed:
        clock.observe(version, at)
        top = max(top, at)
    v = clock.now(wall_ms)
    assert version_wall_ms(v) <= top + 60_000 + 1
