from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imds_replica import Horizons, _view, hlc_version
from imds_replica._codec import encode
from imds_replica._event import Event, Key
from imds_replica._merge import order_key
from imds_replica._view import View
from imds_replica.testing._strategies import events

from ._helpers import view_of

VM = ("vms", "vm1")


def w(key: Key, value: Any, version: int = 1, source: str = "s") -> Event:
    return Event(source, key, version, value)


def dead(key: Key, version: int = 1, source: str = "s") -> Event:
    return Event(source, key, version, deleted=True)


def canonical(value: Any) -> bytes:
    return encode(_view._canonical(value))


# -- apply and statistics -------------------------------------------------------------------
def test_apply_reports_change_only_when_the_register_changes() -> None:
    view = View()
    assert view.apply(w((*VM, "name"), "a", 2))
    assert not view.apply(w((*VM, "name"), "a", 2))  # duplicate
    assert not view.apply(w((*VM, "name"), "old", 1))  # loses the merge
    assert view.apply(dead((*VM, "name"), 3))
    assert view.get((*VM, "name")) == dead((*VM, "name"), 3)
    assert view.get(["vms", "vm1", "name"]) == dead((*VM, "name"), 3)  # type: ignore[arg-type]  # lists accepted
    stats = view.statistics()
    assert (stats.registers, stats.tombstones, stats.documents) == (1, 1, 1)
    assert (stats.applies, stats.noop_applies, stats.change_seq) == (4, 2, 2)


@given(st.lists(events(), max_size=30))
def test_statistics_match_a_dict_model(evs: list[Event]) -> None:
    view = View()
    model: dict[Key, Event] = {}
    changed = 0
    for e in evs:
        old = model.get(e.key)
        wins = old is None or order_key(e) > order_key(old)
        assert view.apply(e) == wins
        if wins:
            model[e.key] = e
            changed += 1
    stats = view.statistics()
    assert stats.registers == len(model) == len(view)
    assert stats.tombstones == sum(e.deleted for e in model.values())
    assert stats.documents == len({k[:2] for k in model})
    assert stats.applies == len(evs)
    assert stats.noop_applies == len(evs) - changed
    assert stats.change_seq == changed
    assert list(view.registers()) == [model[k] for k in sorted(model)]


# -- document building -------------------------------------------------------------------------
def test_nothing_there_is_none() -> None:
    view = view_of(w(("vms", "vm2", "name"), "x"))
    assert view.document(VM) is None
    assert view.document(("callers",)) is None


def test_registers_place_values_at_their_paths() -> None:
    view = view_of(w((*VM, "compute", "name"), "web"), w((*VM, "network", "ip"), "10.0.0.4"),
                   w(("vms", "vm10", "compute", "name"), "other"))
    assert view.document(VM) == {"compute": {"name": "web"}, "network": {"ip": "10.0.0.4"}}
    assert view.document((*VM, "compute")) == {"name": "web"}
    assert view.document((*VM, "compute", "name")) == "web"


def test_deeper_register_overrides_shallower_at_its_path() -> None:
    view = view_of(w((*VM, "compute"), {"name": "a", "tags": {"x": 1}, "zone": 1}, 1),
                   w((*VM, "compute", "tags"), {"y": 2}, 2),
                   w((*VM, "compute", "tags", "z"), 3, 3))
    # A newer deeper register overrides its older ancestors at its path.
    assert view.document(VM) == {"compute": {"name": "a", "tags": {"y": 2, "z": 3},
                                             "zone": 1}}
    assert view.document((*VM, "compute", "tags")) == {"y": 2, "z": 3}
    assert view.document((*VM, "compute", "name")) == "a"
    assert view.document((*VM, "compute", "missing")) is None


def test_deeper_register_replaces_a_scalar_with_an_object() -> None:
    view = view_of(w((*VM, "compute"), "flat"), w((*VM, "compute", "name"), "n"))
    assert view.document(VM) == {"compute": {"name": "n"}}


def test_tombstoned_paths_are_absent() -> None:
    # The child's tombstone is newer than its parent's value. (Until session 5 this test
    # had both at version 1 and relied on the tombstone marker's digest ordering above the
    # parent's; a tombstone now orders below every value of its version and source, see
    # the next test.)
    view = view_of(w((*VM, "compute"), {"name": "a", "tags": {"x": 1}}),
                   dead((*VM, "compute", "tags"), 2),
                   w((*VM, "network"), {"ip": "1"}),
                   dead((*VM, "network"), 2))
    assert view.document(VM) == {"compute": {"name": "a"}}
    assert view.document((*VM, "compute", "tags")) is None
    assert view.document((*VM, "network")) is None
    assert view.document((*VM, "network", "ip")) is None


def test_a_tombstone_under_a_value_of_its_version_and_source_is_hidden() -> None:
    """The document rule compares with the merge order, where a tombstone is below every
    value of its version and source: a child's tombstone hides nothing of a parent value
    written at its version, and a parent's tombstone hides no child written at its
    version. A stream resync tombstones what it lost at ``held + 1``; a write republished
    at that version then shows as on a host that never held the key (docs/fleet.md)."""
    parent = w((*VM, "compute"), {"name": "a", "tags": {"x": 1}})
    view = view_of(parent, dead((*VM, "compute", "tags")))
    assert view.document(VM) == {"compute": {"name": "a", "tags": {"x": 1}}}
    assert view.document(VM) == view_of(parent).document(VM)
    child = w((*VM, "compute", "tags"), {"y": 2})
    view = view_of(dead((*VM, "compute")), child)
    assert view.document(VM) == {"compute": {"tags": {"y": 2}}}
    assert view.document(VM) == view_of(child).document(VM)


def test_deeper_live_register_under_a_tombstone_still_places() -> None:
    view = view_of(dead((*VM, "compute")), w((*VM, "compute", "name"), "back", 2))
    assert view.document(VM) == {"compute": {"name": "back"}}
    assert view.document((*VM, "compute")) == {"name": "back"}


def test_document_of_all_tombstones_is_none() -> None:
    view = view_of(dead((*VM, "a")), dead((*VM, "b", "c")))
    assert view.document(VM) is None
    info = view.document_info(VM)
    assert info is not None
    assert info.counter == 2


def test_list_indexes_follow_json_pointer() -> None:
    view = view_of(w((*VM, "disks"), ["a", "b", "c", "d"]),
                   w((*VM, "disks", "1"), "B", 2),
                   dead((*VM, "disks", "0"), 2),
                   dead((*VM, "disks", "2"), 2),
                   w((*VM, "disks", "01"), "not an index", 2))
    # Without "01": "1" replaces element 1; "0" and "2" are removed (indexes name the
    # stored list, so removing one does not shift what another register addresses).
    view2 = view_of(*[e for e in view.registers() if e.key != (*VM, "disks", "01")])
    assert view2.document(VM) == {"disks": ["B", "d"]}
    assert view2.document((*VM, "disks", "0")) == "B"
    assert view2.document((*VM, "disks", "1")) == "d"
    assert view2.document((*VM, "disks", "2")) is None
    # "01" is not an index: it addresses nothing inside the list, and the list keeps its
    # shape (it used to turn the list into an object).
    assert view.document(VM) == view2.document(VM)
    assert view.document((*VM, "disks", "01")) is None


@pytest.mark.parametrize("part", ["²", "٣", "-1", "+1", "1e0", " 1", "99"])
def test_odd_indexes_do_not_address_list_elements(part: str) -> None:
    # Regression: "²".isdigit() is True but int("²") raised inside document().
    view = view_of(w((*VM, "l"), [10, 20]), w((*VM, "l", part), 5, 2))
    assert view.document(VM) == {"l": [10, 20]}
    assert view.document((*VM, "l", part)) is None


def test_document_returns_a_fresh_object() -> None:
    view = view_of(w((*VM, "compute"), {"tags": ["a"]}))
    doc = view.document(VM)
    doc["compute"]["tags"].append("mutated")
    assert view.document(VM) == {"compute": {"tags": ["a"]}}


PATHS = st.lists(st.sampled_from(["a", "b", "0", "1"]), max_size=3).map(tuple)
NESTED = events(keys=PATHS.map(lambda p: VM + p),
                values=st.recursive(st.integers(0, 3) | st.none(),
                                    lambda c: st.lists(c, max_size=3)
                                    | st.dictionaries(st.sampled_from(["a", "b", "0"]), c,
                                                      max_size=3),
                                    max_leaves=6))


# Cheap examples, and the interesting ones (a list value, a register beside it) are rare.
@settings(max_examples=max(1000, settings().max_examples))
@given(st.lists(NESTED, max_size=12), PATHS, st.sampled_from(["a", "b", "0", "1", "2"]))
def test_asking_inside_equals_walking_the_document_above(evs: list[Event], path: Key,
                                                         part: str) -> None:
    view = view_of(*evs)
    above = view.document(VM + path)
    below = view.document(VM + path + (part,))
    walked = _view._walk(above, (part,)) if above is not None else _view._MISSING
    expected = None if walked is _view._MISSING else walked
    assert canonical(below) == canonical(expected)


@given(st.lists(events(), max_size=25), st.randoms())
def test_any_order_with_duplicates_gives_identical_view(evs: list[Event], rnd: Any) -> None:
    a = view_of(*evs)
    again = evs + evs[: len(evs) // 2]
    rnd.shuffle(again)
    b = view_of(*again)
    assert a.digest() == b.digest()
    docs = {e.key[:2] for e in evs}
    for d in docs:
        assert canonical(a.document(d)) == canonical(b.document(d))
        ia, ib = a.document_info(d), b.document_info(d)
        assert ia is not None
        assert ib is not None
        assert (ia.etag, ia.sources, ia.max_version) == (ib.etag, ib.sources, ib.max_version)


def test_digest_depends_on_every_register_field() -> None:
    base = view_of(w(("k",), 1)).digest()
    for other in (w(("k",), 2), w(("j",), 1), w(("k",), 1, version=2), w(("k",), 1, source="t"),
                  w(("k",), 1.0), dead(("k",))):
        assert view_of(other).digest() != base
    assert View().digest() != base


# -- change tracking ------------------------------------------------------------------------
def test_document_info_tracks_counter_sources_version_and_etag() -> None:
    view = View()
    assert view.document_info(VM) is None
    view.apply(w((*VM, "a"), 1, 5, "fabric"))
    first = view.document_info(VM)
    assert first is not None
    assert (first.key, first.counter, first.sources, first.max_version) == (
        VM, 1, frozenset({"fabric"}), 5)
    view.apply(w((*VM, "a"), 1, 4, "tags"))  # loses: nothing changes
    assert view.document_info(VM) == first
    view.apply(w((*VM, "b"), 2, 3, "tags"))
    second = view.document_info(VM)
    assert second is not None
    assert (second.counter, second.sources, second.max_version) == (
        2, frozenset({"fabric", "tags"}), 5)
    assert second.etag != first.etag
    view.apply(w((*VM, "b"), 2, 9, "fabric"))  # same content, new owner
    third = view.document_info(VM)
    assert third is not None
    assert (third.counter, third.sources, third.max_version) == (3, frozenset({"fabric"}), 9)
    assert third.etag == second.etag  # content hash: only the content counts


def test_etag_depends_only_on_content() -> None:
    one = view_of(w((*VM, "compute"), {"a": 1, "b": 2}))
    two = view_of(w((*VM, "compute", "b"), 2), w((*VM, "compute", "a"), 1, 3))
    moved = view_of(w((*VM, "compute"), {"b": 2}), w((*VM, "compute", "a"), 1, 2))
    infos = [v.document_info(VM) for v in (one, two, moved)]
    assert len({i.etag for i in infos if i is not None}) == 1
    assert view_of(w((*VM, "compute"), {"a": 1, "b": 2.0})).document_info(VM) != infos[0]


def test_changed_since_and_subscribe() -> None:
    view = View()
    seen: list[Key] = []
    unsubscribe = view.subscribe(seen.append)
    assert view.changed_since(0) == frozenset()
    view.apply(w((*VM, "a"), 1))
    mark = view.change_seq
    view.apply(w(("vms", "vm2", "a"), 1))
    view.apply(w(("vms", "vm3", "a"), 1))
    view.apply(w(("vms", "vm3", "a"), 1))  # no change, no notification
    assert view.changed_since(mark) == frozenset({("vms", "vm2"), ("vms", "vm3")})
    assert view.changed_since(0) == frozenset({VM, ("vms", "vm2"), ("vms", "vm3")})
    assert view.changed_since(view.change_seq) == frozenset()
    assert seen == [VM, ("vms", "vm2"), ("vms", "vm3")]
    unsubscribe()
    view.apply(w((*VM, "a"), 2, 2))
    assert len(seen) == 3


def test_changed_since_forgets_old_history(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_view, "CHANGE_HISTORY", 4)
    view = View()
    for i in range(10):
        view.apply(w(("vms", f"vm{i}", "a"), i))
    assert view.changed_since(0) is None  # too old: the caller must rescan
    assert view.changed_since(5) is None
    assert view.changed_since(6) == frozenset(("vms", f"vm{i}") for i in range(6, 10))
    assert view.changed_since(9) == frozenset({("vms", "vm9")})


def test_compaction_is_a_change_of_the_documents_it_touched() -> None:
    view = view_of(w((*VM, "compute"), {"name": "a", "tags": 1}, HLC),
                   dead((*VM, "old"), HLC + 5), dead(("vms", "vm2", "x"), HLC + 9))
    before = view.document_info(VM)
    assert before is not None
    seen: list[Key] = []
    view.subscribe(seen.append)
    assert view.compact(Horizons(hlc=HLC + 6)) == 1
    assert view.document(VM) == {"compute": {"name": "a", "tags": 1}}
    after = view.document_info(VM)
    assert after is not None
    assert after.etag == before.etag  # the content is what it was
    assert after.counter > before.counter  # the registers behind it changed
    assert seen == [VM]
    stats = view.statistics()
    assert (stats.registers, stats.tombstones) == (2, 1)
    assert view.forget_tombstones(HLC + 10) == 1  # the 0.1 spelling: an HLC horizon
    assert view.statistics().documents == 2  # vm2 keeps its version mark
    info = view.document_info(("vms", "vm2"))
    assert info is not None
    assert info.max_version == HLC + 9


# -- issue 11: the ancestor rule (findings 1, 5, 6) ----------------------------------------
HLC = hlc_version(1_800_000_000_000)  # a hybrid-clock version (2027)


def test_a_newer_whole_object_write_clears_an_older_field_register() -> None:
    # Finding 6: the field register is older than the write of its whole parent.
    view = view_of(w((*VM, "compute", "tags"), {"old": 1}, 1),
                   w((*VM, "compute"), {"name": "a"}, 2))
    assert view.document(VM) == {"compute": {"name": "a"}}
    assert view.document((*VM, "compute", "tags")) is None
    # A newer field register still overrides its older parent.
    view.apply(w((*VM, "compute", "tags"), {"new": 1}, 3))
    assert view.document(VM) == {"compute": {"name": "a", "tags": {"new": 1}}}


def test_a_tombstone_deletes_older_registers_beneath_it_only() -> None:
    view = view_of(w((*VM, "compute", "name"), "old", 1), dead((*VM, "compute"), 2),
                   w((*VM, "compute", "zone"), "new", 3))
    assert view.document(VM) == {"compute": {"zone": "new"}}


def test_an_index_tombstone_does_not_delete_from_a_newer_list() -> None:
    # Finding 6: the tombstone at index 0 was for the old list, not for every later one.
    view = view_of(w((*VM, "tagsList"), ["a", "b"], 1), dead((*VM, "tagsList", "0"), 2))
    assert view.document(VM) == {"tagsList": ["b"]}
    view.apply(w((*VM, "tagsList"), ["x", "y"], 3))
    assert view.document(VM) == {"tagsList": ["x", "y"]}


@pytest.mark.parametrize("part", ["2", "3", "01", "name"])
def test_a_part_outside_the_list_never_changes_its_shape(part: str) -> None:
    # Finding 6: an index equal to the length turned the list into an object.
    view = view_of(w((*VM, "l"), [10, 20], 1), w((*VM, "l", part), 5, 2))
    assert view.document(VM) == {"l": [10, 20]}
    assert view.document((*VM, "l", part)) is None


def test_compaction_does_not_unhide_a_deleted_field() -> None:
    # Finding 1: a tombstone under an older live ancestor changes the document: it stays.
    view = view_of(w((*VM, "compute"), {"name": "vm-a", "secret": "s"}, HLC),
                   dead((*VM, "compute", "secret"), HLC + 1),
                   dead((*VM, "gone"), HLC + 2))
    before = view.document(VM)
    assert before == {"compute": {"name": "vm-a"}}
    assert view.compact(Horizons(hlc=HLC + 100)) == 1  # only the tombstone that hides nothing
    assert view.document(VM) == before
    assert view.get((*VM, "compute", "secret")) is not None


def test_a_hybrid_horizon_leaves_counter_tombstones() -> None:
    # Finding 2: one numeric horizon used to drop every counter source's tombstones.
    view = view_of(dead((*VM, "a"), 5, "counter"), dead((*VM, "b"), HLC, "fabric"))
    assert view.compact(Horizons(hlc=HLC + 1)) == 1
    assert view.get((*VM, "a")) is not None
    assert view.compact(Horizons(sources={"counter": 6})) == 1  # explicitly configured
    assert view.get((*VM, "a")) is None


def test_late_events_below_the_floor_are_counted_noops() -> None:
    # Finding 2: after the tombstone is dropped, an older write must not come back.
    view = view_of(w((*VM, "a"), "old", HLC, "poll"), dead((*VM, "a"), HLC + 5, "admin"),
                   dead((*VM, "c"), 3, "counter"))
    view.compact(Horizons(hlc=HLC + 10, sources={"counter": 4}))
    assert view.get((*VM, "a")) is None
    assert not view.apply(w((*VM, "a"), "old", HLC, "poll"))  # another source, same space
    assert not view.apply(w((*VM, "c"), "x", 2, "counter"))
    assert view.apply(w((*VM, "c2"), "x", 2, "other-counter"))  # another counter space
    assert view.apply(w((*VM, "a"), "new", HLC + 20, "poll"))
    assert view.statistics().floor_noops == 2
    assert view.document(VM) == {"a": "new", "c2": "x"}


def test_max_version_never_goes_backwards_across_compaction() -> None:
    # Finding 8: DocumentIncarnation is the max version under a prefix, tombstones included.
    prefix = (*VM, "scheduledevents")
    view = view_of(w((*prefix, "e1"), {"x": 1}, HLC), dead((*prefix, "e2"), HLC + 7))
    info = view.document_info(VM)
    assert info is not None
    assert view.max_version(prefix) == info.max_version == HLC + 7
    view.compact(Horizons(hlc=HLC + 100))
    assert view.get((*prefix, "e2")) is None
    after = view.document_info(VM)
    assert after is not None
    assert view.max_version(prefix) == after.max_version == HLC + 7
    fresh = View()
    fresh.load(view.registers())
    fresh.restore(view.compaction_state())
    again = fresh.document_info(VM)
    assert again is not None
    assert (fresh.max_version(prefix), again.max_version, again.etag) == (
        HLC + 7, HLC + 7, after.etag)
    assert fresh.change_seq >= view.change_seq  # change numbers never go backwards


def test_a_register_above_document_depth_updates_every_document_below() -> None:
    # Finding 5 (a log written before keys this short were refused at submit).
    view = view_of(w((*VM, "a"), 1), w(("vms", "vm2", "a"), 2))
    seen: list[Key] = []
    view.subscribe(seen.append)
    before = view.document_info(VM)
    view.apply(w(("vms",), {"vm1": {"b": 3}}, 5))
    after = view.document_info(VM)
    assert before is not None
    assert after is not None
    assert after.etag != before.etag
    assert set(seen) >= {VM, ("vms", "vm2")}


def test_the_winning_seq_does_not_depend_on_arrival_order() -> None:
    # Finding 12: the same write delivered twice with different seq numbers.
    a, b = Event("s", (*VM, "a"), 1, "x", seq=7), Event("s", (*VM, "a"), 1, "x", seq=3)
    one, two = view_of(a, b), view_of(b, a)
    got_one, got_two = one.get((*VM, "a")), two.get((*VM, "a"))
    assert got_one is not None
    assert got_two is not None
    assert got_one.seq == got_two.seq == 3
