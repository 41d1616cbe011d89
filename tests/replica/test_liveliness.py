from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imds_replica._clock import hlc_version
from imds_replica._errors import ConfigError
from imds_replica._liveliness import (
    TRANSITIONS,
    Input,
    LivelinessPolicy,
    LivelinessTracker,
    SourceState,
)

S = SourceState
POLICY = LivelinessPolicy(interval=10.0, stale_after=30.0, expired_after=100.0)


def test_table_is_complete_and_contact_always_means_live() -> None:
    assert set(TRANSITIONS) == set(itertools.product(SourceState, Input))
    for state in SourceState:
        assert TRANSITIONS[(state, Input.CONTACT)] is S.LIVE
    # A source never heard from ages from the replica's start (11.12): time alone takes it
    # from UNKNOWN to STALE and EXPIRED, never to LIVE.
    assert TRANSITIONS[(S.UNKNOWN, Input.FRESH)] is S.UNKNOWN
    assert TRANSITIONS[(S.UNKNOWN, Input.AGED_STALE)] is S.STALE
    assert TRANSITIONS[(S.UNKNOWN, Input.AGED_EXPIRED)] is S.EXPIRED


def test_live_stale_expired_and_back() -> None:
    t = LivelinessTracker({"tags": POLICY})
    assert list(t.sources()) == ["tags"]
    assert t.state("tags", 0.0) is S.UNKNOWN
    assert t.state("tags", 1e9) is S.UNKNOWN
    t.contact("tags", 1000.0)
    assert t.state("tags", 1000.0) is S.LIVE
    assert t.state("tags", 1029.9) is S.LIVE
    assert t.state("tags", 1030.0) is S.STALE  # stale_after is inclusive
    assert t.state("tags", 1099.9) is S.STALE
    assert t.state("tags", 1100.0) is S.EXPIRED
    t.failure("tags", 1200.0, "connection refused")  # an attempt, not contact
    status = t.status("tags", 1200.0)
    assert status.state is S.EXPIRED
    assert (status.last_attempt, status.last_error, status.consecutive_failures) == (
        1200.0, "connection refused", 1)
    assert status.last_contact == 1000.0
    assert status.age == 200.0
    t.contact("tags", 1300.0)
    status = t.status("tags", 1300.0)
    assert status.state is S.LIVE
    assert (status.last_error, status.consecutive_failures, status.age) == (None, 0, 0.0)


def test_jump_straight_to_expired() -> None:
    t = LivelinessTracker({"tags": POLICY})
    t.contact("tags", 0.0)
    assert t.state("tags", 500.0) is S.EXPIRED


def test_pushed_policy_never_ages() -> None:
    t = LivelinessTracker({"fabric": LivelinessPolicy.pushed()})
    assert t.state("fabric", 0.0) is S.UNKNOWN
    t.contact("fabric", 0.0)
    assert t.state("fabric", 1e12) is S.LIVE


def test_applied_records_change_and_lag_for_hlc_sources() -> None:
    hlc = LivelinessPolicy(interval=10.0, stale_after=30.0, expired_after=100.0,
                           hlc_versions=True)
    t = LivelinessTracker({"tags": hlc, "counter": POLICY})
    t.applied("tags", 50.0, hlc_version(40_000))
    t.applied("tags", 51.0, hlc_version(30_000))  # an older version: newest stays
    t.applied("counter", 50.0, 17)
    status = t.status("tags", 60.0)
    assert status.newest_version == hlc_version(40_000)
    assert status.lag == pytest.approx(20.0)
    assert (status.last_change, status.last_contact) == (51.0, 51.0)
    counter = t.status("counter", 60.0)
    assert counter.lag is None
    assert counter.newest_version == 17
    assert t.status("counter", 60.0).to_dict()["state"] == "live"


def test_unknown_source_uses_default_and_querying_does_not_register() -> None:
    t = LivelinessTracker(default=POLICY)
    status = t.status("nobody", 5.0)
    assert status.state is S.UNKNOWN
    assert status.policy == POLICY
    assert list(t.sources()) == []  # asking is not tracking
    t.failure("poller", 1.0, "boom")
    assert list(t.sources()) == ["poller"]
    assert t.state("poller", 1.0) is S.UNKNOWN
    assert set(t.snapshot(2.0)) == {"poller"}


@pytest.mark.parametrize(("interval", "stale", "expired"),
                         [(0.0, 1.0, 2.0), (5.0, 4.0, 10.0), (1.0, 10.0, 5.0),
                          (float("nan"), 1.0, 2.0)])
def test_policy_validates(interval: float, stale: float, expired: float) -> None:
    with pytest.raises(ConfigError, match="liveliness"):
        LivelinessPolicy(interval=interval, stale_after=stale, expired_after=expired)


def model_state(contacts: list[float], now: float, policy: LivelinessPolicy,
                started: float | None = None) -> SourceState:
    """The documented rule, independent of the table: by the age of the last contact, or
    of the start when there was none (UNKNOWN until it is stale)."""
    if not contacts:
        if started is None or policy.always_live:
            return S.UNKNOWN
        age = max(0.0, now - started)
        if age < policy.stale_after:
            return S.UNKNOWN
        return S.STALE if age < policy.expired_after else S.EXPIRED
    age = max(0.0, now - contacts[-1])
    if policy.always_live or age < policy.stale_after:
        return S.LIVE
    return S.STALE if age < policy.expired_after else S.EXPIRED


@given(st.lists(st.tuples(st.sampled_from(["contact", "failure", "query"]),
                          st.floats(0, 300, allow_nan=False)), max_size=30),
       st.booleans(), st.one_of(st.none(), st.just(0.0)))
def test_state_is_a_function_of_the_last_contact(ops: list[tuple[str, float]],
                                                  always_live: bool,
                                                  started: float | None) -> None:
    policy = LivelinessPolicy(interval=10.0, stale_after=30.0, expired_after=100.0,
                              always_live=always_live)
    t = LivelinessTracker({"s": policy}, started=started)
    now = 0.0
    contacts: list[float] = []
    for op, dt in ops:
        now += dt  # time only moves forward here
        if op == "contact":
            t.contact("s", now)
            contacts.append(now)
        elif op == "failure":
            t.failure("s", now, "x")
        assert t.state("s", now) is model_state(contacts, now, policy, started)


# -- 11.12: a source that never makes contact ages from the replica's start -------------------

def test_a_source_never_heard_from_ages_from_the_start() -> None:
    t = LivelinessTracker({"tags": POLICY}, started=1000.0)
    assert t.state("tags", 1029.9) is S.UNKNOWN
    status = t.status("tags", 1030.0)
    assert status.state is S.STALE
    assert status.last_contact is None
    assert status.age == 30.0  # since the start: what the replica can vouch for
    assert t.state("tags", 1100.0) is S.EXPIRED
    t.contact("tags", 1200.0)
    assert t.state("tags", 1200.0) is S.LIVE
    # Pushed sources are live by construction, once they spoke; before, they are unknown.
    t.set_policy("fabric", LivelinessPolicy.pushed())
    assert t.state("fabric", 1e9) is S.UNKNOWN


# -- 11.15: liveliness recovered after a restart --------------------------------------------

HLC = LivelinessPolicy(interval=10.0, stale_after=30.0, expired_after=100.0, hlc_versions=True)


def test_recover_restores_contact_and_newest_version_per_source() -> None:
    t = LivelinessTracker({"poll": POLICY, "fabric": LivelinessPolicy.pushed(),
                           "files": HLC}, started=5000.0)
    t.recover(newest={"poll": 7, "fabric": 3, "files": hlc_version(4_990_000), "ops": 2},
              contacts={"poll": 4990.0})
    assert sorted(t.sources()) == ["fabric", "files", "ops", "poll"]
    poll = t.status("poll", 5000.0)
    assert (poll.state, poll.last_contact, poll.newest_version) == (S.LIVE, 4990.0, 7)
    assert t.state("poll", 5020.0) is S.STALE  # 30 s after the persisted contact
    # Pushed data is live by construction once it exists.
    assert t.state("fabric", 5000.0) is S.LIVE
    # Without a persisted contact, an HLC source's newest version dates its data.
    files = t.status("files", 5000.0)
    assert files.state is S.LIVE
    assert files.last_contact == 4990.0
    assert files.lag == pytest.approx(10.0)
    # A counter source with data but no persisted contact: unknown, ageing from the start.
    assert t.state("ops", 5000.0) is S.UNKNOWN
    assert t.state("ops", 5180.0) is S.STALE  # the default policy: stale after 180 s


def test_recover_never_moves_a_contact_backwards_or_into_the_future() -> None:
    t = LivelinessTracker({"poll": POLICY}, started=100.0)
    t.contact("poll", 150.0)
    t.recover(newest={"poll": 1}, contacts={"poll": 120.0})
    assert t.status("poll", 150.0).last_contact == 150.0
    u = LivelinessTracker({"poll": POLICY}, started=100.0)
    u.recover(newest={}, contacts={"poll": 10_000.0})  # written by a clock far ahead
    assert u.status("poll", 100.0).last_contact == 100.0


def test_generation_moves_with_every_contact() -> None:
    t = LivelinessTracker({"poll": POLICY}, started=0.0)
    g = t.generation
    t.contact("poll", 1.0)
    assert t.generation > g
    g = t.generation
    t.status("poll", 2.0)  # reading is not a change
    assert t.generation == g
