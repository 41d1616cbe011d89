from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imds_replica import _view
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
    view = view_of(w((*VM, "compute"), {"name": "a", "tags": {"x": 1}, "zone": 1}, 9),
                   w((*VM, "compute", "tags"), {"y": 2}, 1),
                   w((*VM, "compute", "tags", "z"), 3, 1))
    # Whatever the versions: depth decides between registers on different keys.
    assert view.document(VM) == {"compute": {"name": "a", "tags": {"y": 2, "z": 3},
                                             "zone": 1}}
    assert view.document((*VM, "compute", "tags")) == {"y": 2, "z": 3}
    assert view.document((*VM, "compute", "name")) == "a"
    assert view.document((*VM, "compute", "missing")) is None


def test_deeper_register_replaces_a_scalar_with_an_object() -> None:
    view = view_of(w((*VM, "compute"), "flat"), w((*VM, "compute", "name"), "n"))
    assert view.document(VM) == {"compute": {"name": "n"}}


def test_tombstoned_paths_are_absent() -> None:
    view = view_of(w((*VM, "compute"), {"name": "a", "tags": {"x": 1}}),
                   dead((*VM, "compute", "tags")),
                   w((*VM, "network"), {"ip": "1"}),
                   dead((*VM, "network"), 2))
    assert view.document(VM) == {"compute": {"name": "a"}}
    assert view.document((*VM, "compute", "tags")) is None
    assert view.document((*VM, "network")) is None
    assert view.document((*VM, "network", "ip")) is None


def test_deeper_live_register_under_a_tombstone_still_places() -> None:
    view = view_of(dead((*VM, "compute")), w((*VM, "compute", "name"), "back"))
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
                   w((*VM, "disks", "1"), "B"),
                   dead((*VM, "disks", "0")),
                   dead((*VM, "disks", "2")),
                   w((*VM, "disks", "01"), "not an index"))
    # Without "01": "1" replaces element 1; "0" and "2" are removed (indexes name the
    # stored list, so removing one does not shift what another register addresses).
    view2 = view_of(*[e for e in view.registers() if e.key != (*VM, "disks", "01")])
    assert view2.document(VM) == {"disks": ["B", "d"]}
    assert view2.document((*VM, "disks", "0")) == "B"
    assert view2.document((*VM, "disks", "1")) == "d"
    assert view2.document((*VM, "disks", "2")) is None
    # "01" is not an index: in key order ("0" < "01" < "1" < "2") it turns the list into
    # an object, which "1" then gets as a member and "2" finds nothing in.
    assert view.document(VM) == {"disks": {"01": "not an index", "1": "B"}}
    assert view.document((*VM, "disks", "1")) == "B"


@pytest.mark.parametrize("part", ["²", "٣", "-1", "+1", "1e0", " 1", "99"])
def test_odd_indexes_do_not_address_list_elements(part: str) -> None:
    # Regression: "²".isdigit() is True but int("²") raised inside document().
    view = view_of(w((*VM, "l"), [10, 20]), w((*VM, "l", part), 5))
    assert view.document(VM) == {"l": {part: 5}}
    assert view.document((*VM, "l", part)) == 5


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
    moved = view_of(w((*VM, "compute"), {"b": 2}), w((*VM, "compute", "a"), 1))
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


def test_forget_tombstones_is_a_change_of_the_document() -> None:
    view = view_of(w((*VM, "compute"), {"name": "a", "tags": 1}),
                   dead((*VM, "compute", "tags"), 5), dead(("vms", "vm2", "x"), 9))
    before = view.document_info(VM)
    assert before is not None
    seen: list[Key] = []
    view.subscribe(seen.append)
    assert view.forget_tombstones(6) == 1
    # The tombstone hid part of a shallower value: with it gone, the document changed.
    assert view.document(VM) == {"compute": {"name": "a", "tags": 1}}
    after = view.document_info(VM)
    assert after is not None
    assert after.etag != before.etag
    assert after.counter == before.counter + 1
    assert seen == [VM]
    stats = view.statistics()
    assert (stats.registers, stats.tombstones) == (2, 1)
    assert view.forget_tombstones(10) == 1
    assert view.statistics().documents == 1  # vm2 held only that tombstone
