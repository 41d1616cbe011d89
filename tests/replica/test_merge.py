from __future__ import annotations

import hashlib
from functools import reduce

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from imds_replica._event import Event
from imds_replica._merge import merge, order_key, supersedes
from imds_replica.testing._strategies import events, json_values

# One key, few sources and versions: most pairs tie on version, many on source too.
SAME_KEY = events(keys=st.just(("vms", "vm0", "name")), version=st.integers(0, 2),
                  values=st.sampled_from([0, 1, 1.0, True, None, "a", [1], {"a": 1}]))
MAYBE = st.none() | SAME_KEY


def model_winner(evs: list[Event]) -> Event | None:
    """The contract, computed independently: highest version, then source name, then the
    blake2b-128 of the canonical value bytes (empty for a tombstone: below every value)."""
    def rank(e: Event) -> tuple[int, str, bytes]:
        if e.deleted:
            return (e.version, e.source, b"")
        data = msgpack.packb(e.value, use_bin_type=True)
        return (e.version, e.source, hashlib.blake2b(data, digest_size=16).digest())

    return max(evs, key=rank, default=None)


@given(MAYBE, MAYBE)
def test_commutative(a: Event | None, b: Event | None) -> None:
    assert merge(a, b) == merge(b, a)


@given(MAYBE, MAYBE, MAYBE)
def test_associative(a: Event | None, b: Event | None, c: Event | None) -> None:
    assert merge(merge(a, b), c) == merge(a, merge(b, c))


@given(MAYBE)
def test_idempotent(a: Event | None) -> None:
    assert merge(a, a) == a
    assert merge(a, None) == a == merge(None, a)


@given(st.lists(SAME_KEY, max_size=8), st.randoms())
def test_fold_in_any_order_picks_the_model_winner(evs: list[Event], rnd: object) -> None:
    shuffled = list(evs) + list(evs)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    winner = reduce(merge, shuffled, None)
    assert winner == model_winner(evs)
    if winner is not None:
        assert winner.digest == model_winner(evs).digest  # type: ignore[union-attr]


@given(SAME_KEY, SAME_KEY)
def test_supersedes_is_a_strict_total_order(a: Event, b: Event) -> None:
    if a == b:
        assert not supersedes(a, b)
        assert not supersedes(b, a)
    else:
        assert supersedes(a, b) != supersedes(b, a)
    assert supersedes(a, None)


def test_version_then_source_then_digest() -> None:
    k = ("k",)
    assert supersedes(Event("a", k, 2, "x"), Event("z", k, 1, "x"))
    assert supersedes(Event("b", k, 1, "x"), Event("a", k, 1, "y"))
    x, y = Event("a", k, 1, "x"), Event("a", k, 1, "y")
    assert supersedes(x, y) == (x.digest > y.digest)
    assert order_key(x) == (1, "a", x.digest)


def test_tombstone_orders_like_a_value() -> None:
    k = ("k",)
    dead = Event("s", k, 5, deleted=True)
    assert supersedes(dead, Event("s", k, 4, "newer? no"))
    assert not supersedes(dead, Event("s", k, 6, "later write"))
    assert supersedes(dead, Event("r", k, 5, "same version, smaller source"))
    # The regression case: tombstone and the value 1 at one version from one source.
    one = Event("s", k, 5, 1)
    assert supersedes(dead, one) != supersedes(one, dead)
    assert merge(dead, one) == merge(one, dead)


@given(json_values(max_leaves=3))
def test_a_value_beats_a_tombstone_of_the_same_version_and_source(value: object) -> None:
    """Whatever its digest (a stream resync tombstones at ``held + 1``: a write published
    at that version must win on every host, docs/fleet.md)."""
    k = ("k",)
    dead, live = Event("s", k, 5, deleted=True), Event("s", k, 5, value)
    assert dead.digest == b"" < live.digest
    assert supersedes(live, dead)
    assert not supersedes(dead, live)
    assert merge(dead, live) is live
    assert merge(live, dead) is live


@given(json_values(max_leaves=3), json_values(max_leaves=3), st.sampled_from(["a", "b"]),
       st.sampled_from(["a", "b"]))
def test_equal_versions_from_different_sources(v1: object, v2: object, s1: str,
                                               s2: str) -> None:
    a, b = Event(s1, ("k",), 7, v1), Event(s2, ("k",), 7, v2)
    expected = model_winner([a, b])
    assert merge(a, b) == merge(b, a) == expected
    if s1 != s2:
        assert merge(a, b).source == "b"  # type: ignore[union-attr]
