"""Compaction horizons and floors (issue 11, findings 1, 2, 8): a compacted replica and
one that never compacted, fed the same events, cannot be told apart by what they serve."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imds_replica import CompactionState, Event, Horizons, ValidationError, View, hlc_version
from imds_replica._horizon import HLC_SPACE_MIN, as_horizons, is_hlc

T = hlc_version(1_800_000_000_000)
VMS = ("vm0", "vm1")
#: Nested paths under a VM: ancestors, descendants, list indexes (hybrid-clock sources).
PATHS = ((), ("compute",), ("compute", "name"), ("compute", "tags"), ("compute", "tags", "0"),
         ("compute", "tags", "1"), ("scheduledevents",), ("scheduledevents", "e1"),
         ("scheduledevents", "e1", "EventStatus"))
#: A counter source owns its subtree: no hybrid-clock source writes at or above its keys
#: (the stated assumption: a hybrid tombstone above counter keys hides later counter
#: writes only until it is compacted away).
COUNTER_PATHS = ((), ("ctr",), ("ctr", "a"), ("ctr", "a", "0"), ("ctr", "b"))
VALUES = st.sampled_from([0, 1, "x", [1, 2], ["a"], {"name": "n", "tags": [3]},
                          {"EventStatus": "Scheduled"}, {"a": [0]}])


@st.composite
def hlc_events(draw: st.DrawFn, low: int, high: int) -> Event:
    key = ("vms", draw(st.sampled_from(VMS)), *draw(st.sampled_from(PATHS)))
    source = draw(st.sampled_from(["fabric", "admin", "poll"]))
    version = T + draw(st.integers(low, high))
    if draw(st.integers(0, 2)) == 0:
        return Event(source, key, version, deleted=True)
    return Event(source, key, version, draw(VALUES))


@st.composite
def counter_events(draw: st.DrawFn, low: int, high: int) -> Event:
    key = ("counters", draw(st.sampled_from(VMS)), *draw(st.sampled_from(COUNTER_PATHS)))
    version = draw(st.integers(low, high))
    if draw(st.integers(0, 2)) == 0:
        return Event("ctr", key, version, deleted=True)
    return Event("ctr", key, version, draw(VALUES))


def served(view: View) -> dict[str, Any]:
    """Everything a replica serves or compares: documents, ETags, incarnations, digest."""
    out: dict[str, Any] = {"digest": view.content_digest()}
    for doc in [(top, vm) for top in ("vms", "counters") for vm in VMS]:
        info = view.document_info(doc)
        out["/".join(doc)] = (
            view.document(doc), None if info is None else (info.etag, info.max_version),
            [view.max_version((*doc, p)) for p in ("compute", "scheduledevents", "ctr")])
    return out


@settings(max_examples=max(300, settings().max_examples), deadline=None)
@given(data=st.data())
def test_a_compacted_replica_serves_what_an_uncompacted_one_does(data: st.DataObject) -> None:
    horizon = data.draw(st.integers(0, 20), label="hlc horizon (offset)")
    counter_horizon = data.draw(st.integers(0, 20), label="counter horizon")
    seen = data.draw(st.lists(hlc_events(0, 20) | counter_events(0, 20), max_size=25),
                     label="events both saw")
    # Afterwards: redeliveries of anything seen (older than the horizons included), and
    # new events, which are never older than the horizon (the gc_grace assumption).
    late = data.draw(st.lists(st.sampled_from(seen), max_size=10) if seen else st.just([]),
                     label="late redeliveries")
    new = data.draw(st.lists(hlc_events(horizon, 30) | counter_events(counter_horizon, 30),
                             max_size=8), label="new events")
    after = data.draw(st.permutations(late + new), label="delivery order")
    horizons = Horizons(hlc=T + horizon, sources={"ctr": counter_horizon})

    plain, compacted = View(), View()
    for e in seen:
        plain.apply(e)
    for e in data.draw(st.permutations(seen), label="the other replica's order"):
        compacted.apply(e)
    compacted.compact(horizons)
    if data.draw(st.booleans(), label="restart after compacting"):
        restarted = View()
        restarted.load(compacted.registers())
        restarted.restore(compacted.compaction_state())
        compacted = restarted
    for e in after:
        plain.apply(e)
    for e in data.draw(st.permutations(after), label="the other replica's late order"):
        compacted.apply(e)
    if data.draw(st.booleans(), label="compact again"):
        compacted.compact(horizons)
    assert served(compacted) == served(plain)


def test_dropping_a_tombstone_under_an_older_live_value_would_be_seen() -> None:
    # The negative control of the property: without the "hides nothing" condition (the
    # 0.1 behaviour), the documents differ.
    vm = ("vms", "vm0")
    view = View()
    view.apply(Event("fabric", (*vm, "compute"), T, {"name": "n", "tags": [3]}))
    view.apply(Event("admin", (*vm, "compute", "tags"), T + 1, deleted=True))
    before = view.document(vm)
    assert view.compact(Horizons(hlc=T + 5)) == 0
    key = (*vm, "compute", "tags")
    del view._registers[key]  # what 0.1 compaction did
    view._index.remove(key)
    assert view.document(vm) != before


def test_horizons_and_state_round_trip() -> None:
    assert is_hlc(T)
    assert not is_hlc(HLC_SPACE_MIN - 1)
    h = Horizons.age(7 * 86400, now=1_800_000_000.0, sources={"ctr": 9})
    assert h.hlc == hlc_version(1_800_000_000_000 - 7 * 86400 * 1000)
    assert h.horizon_for("ctr", 3) == 9
    assert h.horizon_for("fabric", T) == h.hlc
    assert h.horizon_for("fabric", 3) is None  # counter-versioned: never, unless named
    assert as_horizons(5) == Horizons(hlc=5)
    with pytest.raises(ValidationError, match="negative"):
        Horizons.age(-1, now=0)
    state = CompactionState(T, {"ctr": 4}, {("vms", "a"): T, ("vms",): T}, 12)
    assert CompactionState.from_json(state.to_json()) == state
    assert CompactionState.from_json({**state.to_json(), "later": [1]}) == state
    with pytest.raises(ValueError, match="malformed"):
        CompactionState.from_json({"hlc_floor": "x"})
