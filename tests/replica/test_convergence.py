"""The convergence proof: replicas that received the same set of events hold the same view.

The main property runs real replicas (``open_replica`` over ``MemoryLog`` with
``PushSource``s, on a ``MockClock``) under generated delivery schedules: any order, any
duplicates, lost deliveries redelivered later, crashes and restarts.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from imds_replica._codec import encode
from imds_replica._event import Event, Key
from imds_replica._logport import Checkpoint, MemoryLog
from imds_replica._replica import open_replica
from imds_replica._view import View, _canonical
from imds_replica.testing._convergence import check_convergence
from imds_replica.testing._sim import Deliver, Schedule
from imds_replica.testing._strategies import batches, convergence_cases, events, vm_keys
from tests.conftest import CONVERGENCE_EXAMPLES

from ._helpers import view_of

PROFILE = settings.get_current_profile_name()


@settings(max_examples=CONVERGENCE_EXAMPLES.get(PROFILE, 300))
@given(convergence_cases(max_events=12, replicas=5))
def test_replicas_converge_under_any_delivery(case: tuple[list[Event], list[Schedule]]) -> None:
    evs, schedules = case
    outcome = check_convergence(evs, schedules)
    assert outcome.replicas == 5
    assert outcome.digest == view_of(*evs).digest()


TOMBSTONE_HEAVY = st.one_of(
    events(keys=vm_keys(vms=1, max_depth=2), version=st.integers(0, 2), tombstones=False),
    st.builds(lambda s, k, v: Event(s, k, v, deleted=True), st.sampled_from(["a", "b"]),
              vm_keys(vms=1, max_depth=2), st.integers(0, 2)),
)


@given(convergence_cases(max_events=10, replicas=3, event_strategy=TOMBSTONE_HEAVY))
@example(([Event("fabric", ("vms", "vm0"), 0, None),  # a list element's tombstone
           Event("a", ("vms", "vm0", "0"), 0, deleted=True),
           Event("fabric", ("vms", "vm0", "1"), 0, []),
           Event("fabric", ("vms", "vm0"), 0, [None, None])],
          [Schedule((Deliver((0, 1, 2, 3)),))] * 3))
@example(([Event("fabric", ("vms", "vm0"), 0, None),  # an ancestor outranks the tombstone
           Event("a", ("vms", "vm0", "name"), 0, deleted=True),
           Event("fabric", ("vms", "vm0"), 0, {"0": 0, "name": "n"})],
          [Schedule((Deliver((0, 1, 2)),))] * 3))
def test_tombstones_converge(case: tuple[list[Event], list[Schedule]]) -> None:
    evs, schedules = case
    outcome = check_convergence(evs, schedules)
    # And a key whose winner is a tombstone is absent from the agreed document. (Unless
    # its path runs through a list: a removed list element leaves the list and the later
    # elements move up, so the same index may then address one of them. Or unless an
    # ancestor register outranks it: by the ancestor rule the tombstone then takes no part,
    # and the ancestor's value may hold that key.)
    view = view_of(*evs)
    winners = model(evs)
    for key, winner in winners.items():
        if winner.deleted and not any(k[:len(key)] == key and k != key and not w.deleted
                                      for k, w in winners.items()) and not any(
                isinstance(view.document(key[:i]), list) for i in range(2, len(key))) \
                and not any(key[:i] in winners and rank(winners[key[:i]]) > rank(winner)
                            for i in range(2, len(key))):
            assert view.document(key) is None
    assert outcome.digest == view.digest()


SAME_VERSION = events(keys=vm_keys(vms=2, max_depth=1), version=st.just(7),
                      sources=["a", "b", "c", "d", "e"])


@given(convergence_cases(max_events=10, replicas=3, event_strategy=SAME_VERSION))
def test_equal_versions_from_different_sources_resolve_identically(
        case: tuple[list[Event], list[Schedule]]) -> None:
    evs, schedules = case
    check_convergence(evs, schedules)
    view = view_of(*evs)
    for key, winner in model(evs).items():
        assert view.get(key) == winner
        assert winner.source == max(e.source for e in evs if e.key == key)


# -- the state machine --------------------------------------------------------------------------
def rank(e: Event) -> tuple[int, str, bytes]:
    """The contract's order computed without the library: version, source, blake2b-128 of
    the canonical bytes (empty for a tombstone: below every value)."""
    if e.deleted:
        return (e.version, e.source, b"")
    data = msgpack.packb(e.value, use_bin_type=True)
    return (e.version, e.source, hashlib.blake2b(data, digest_size=16).digest())


def model(evs: Any) -> dict[Key, Event]:
    """The plain-dict model: key -> the highest-ranked event received for it."""
    out: dict[Key, Event] = {}
    for e in evs:
        if e.key not in out or rank(e) > rank(out[e.key]):
            out[e.key] = e
    return out


def document_bytes(view: View, doc: Key) -> bytes:
    return encode(_canonical(view.document(doc)))


async def _recover(records: list[Any]) -> View:
    view = View()
    async with open_replica(MemoryLog(records), view=view):
        pass
    return view


N_REPLICAS = 5


class ReplicaFleet(RuleBasedStateMachine):
    """Five replicas, each a view over its own durable log, exchanging events in any order;
    compared after every step with a plain dict model of what each one received."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[list[Any]] = [[] for _ in range(N_REPLICAS)]
        self.views = [View() for _ in range(N_REPLICAS)]
        self.received: list[set[Event]] = [set() for _ in range(N_REPLICAS)]
        self.known: list[Event] = []

    def _deliver(self, i: int, batch: list[Event]) -> None:
        # What MemoryLog.append does once durable: record the batch, then apply it in order.
        self.records[i].append((tuple(batch), Checkpoint("sim", len(self.records[i]))))
        for e in batch:
            self.views[i].apply(e)
        self.received[i].update(batch)

    @rule(i=st.integers(0, N_REPLICAS - 1), batch=batches(max_size=4))
    def write(self, i: int, batch: list[Event]) -> None:
        """New events originate at one replica."""
        self._deliver(i, batch)
        self.known.extend(batch)

    @precondition(lambda self: self.known)
    @rule(i=st.integers(0, N_REPLICAS - 1), data=st.data())
    def redeliver(self, i: int, data: st.DataObject) -> None:
        """Any known events again, in any order: late, duplicated, reordered."""
        batch = data.draw(st.lists(st.sampled_from(self.known), min_size=1, max_size=6))
        self._deliver(i, batch)

    @rule(src=st.integers(0, N_REPLICAS - 1), dst=st.integers(0, N_REPLICAS - 1),
          reverse=st.booleans())
    def gossip(self, src: int, dst: int, reverse: bool) -> None:
        """Anti-entropy: ``dst`` receives everything ``src`` logged, newest first or last."""
        batch = [e for b, _ in self.records[src] for e in b]
        self._deliver(dst, batch[::-1] if reverse else batch)

    @rule(i=st.integers(0, N_REPLICAS - 1))
    def restart(self, i: int) -> None:
        """Crash and restart: the recovered view must equal the one before the crash."""
        recovered = trio.run(_recover, self.records[i],
                             clock=trio.testing.MockClock(autojump_threshold=0))
        assert recovered.digest() == self.views[i].digest()
        self.views[i] = recovered

    @invariant()
    def each_replica_matches_the_dict_model(self) -> None:
        for view, received in zip(self.views, self.received, strict=True):
            expected = model(received)
            assert {e.key: e for e in view.registers()} == expected
            assert [e.digest for e in view.registers()] == [
                expected[k].digest for k in sorted(expected)]

    @invariant()
    def same_set_same_view(self) -> None:
        groups: dict[frozenset[Event], list[View]] = {}
        for view, received in zip(self.views, self.received, strict=True):
            groups.setdefault(frozenset(received), []).append(view)
        for received_set, views in groups.items():
            docs = sorted({e.key[:2] for e in received_set})
            first = views[0]
            for other in views[1:]:
                assert other.digest() == first.digest()
                for doc in docs:
                    assert document_bytes(other, doc) == document_bytes(first, doc)

    def teardown(self) -> None:
        # Full exchange at the end: everyone converges on the union.
        union = [e for b in self.records for batch, _ in b for e in batch]
        for i in range(N_REPLICAS):
            self._deliver(i, union)
        self.each_replica_matches_the_dict_model()
        digests = {v.digest() for v in self.views}
        assert len(digests) == 1


ReplicaFleet.TestCase.settings = settings(
    stateful_step_count=25,
    max_examples=settings().max_examples)
TestReplicaFleet = ReplicaFleet.TestCase
