"""Hypothesis strategies for events, batches and delivery schedules.

The event strategies draw from deliberately small pools (a few sources, VMs, path parts and
versions) so that generated events collide: the same key written by several sources at the
same version, tombstones racing writes, deeper registers under shallower ones, list indexes
into values. ``any_events`` spans the whole contract instead (every valid source, key and
value shape), for validation and encoding properties.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from .._event import MAX_KEY_BYTES, MAX_KEY_PARTS, MAX_VERSION, Event, Key
from ._sim import Deliver, Interrupt, Restart, Schedule, Step

#: Source names used by the colliding strategies (several, so equal versions tie on source).
SOURCES = ("fabric", "net-agent", "tags", "tags.v2")
#: Path parts below ``("vms", VMID)``: sections, fields, and list indexes ("0", "1", and
#: the non-canonical "01", which must not address a list element).
PATH_PARTS = ("compute", "network", "tagsList", "name", "0", "1", "01")


def source_names() -> st.SearchStrategy[str]:
    """Any valid source name (``[a-z0-9][a-z0-9_.-]{0,63}``)."""
    return st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,63}", fullmatch=True)


def key_parts() -> st.SearchStrategy[str]:
    """Any valid key part: non-empty text without NUL (and without lone surrogates)."""
    return st.text(st.characters(codec="utf-8", exclude_characters="\x00"),
                   min_size=1, max_size=40)


def _key_size(key: Sequence[str]) -> int:
    return sum(len(p.encode("utf-8")) + 1 for p in key)


def any_keys() -> st.SearchStrategy[Key]:
    """Any valid key: 1..32 parts, at most 1 KiB (UTF-8 plus one byte per part)."""
    return st.lists(key_parts(), min_size=1, max_size=MAX_KEY_PARTS).map(tuple).filter(
        lambda k: _key_size(k) <= MAX_KEY_BYTES)


def json_values(*, max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """JSON-representable values: null, booleans, 64-bit ints, finite floats, text, and
    lists and objects of them (including the int/float/bool look-alikes 1, 1.0, True)."""
    scalars = st.one_of(
        st.none(), st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(st.characters(codec="utf-8"), max_size=12),
        st.sampled_from([0, 1, 1.0, -0.0, True, "", "1"]),
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=6),
                            children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


def versions(*, tie_range: int = 4) -> st.SearchStrategy[int]:
    """Versions, mostly from ``0..tie_range`` (so events tie), sometimes anywhere up to the
    largest allowed (``2**63 - 1``)."""
    return st.one_of(
        st.integers(0, tie_range), st.integers(0, tie_range),
        st.integers(0, MAX_VERSION), st.just(MAX_VERSION),
    )


def vm_keys(*, vms: int = 3, max_depth: int = 3) -> st.SearchStrategy[Key]:
    """Keys under ``("vms", VMID)`` from small pools: the document root itself, sections,
    fields, list indexes; deeper and shallower registers of one document collide."""
    return st.builds(
        lambda vm, rest: ("vms", f"vm{vm}", *rest),
        st.integers(0, vms - 1),
        st.lists(st.sampled_from(PATH_PARTS), min_size=0, max_size=max_depth),
    )


def events(*, sources: Sequence[str] = SOURCES, keys: st.SearchStrategy[Key] | None = None,
           values: st.SearchStrategy[Any] | None = None,
           version: st.SearchStrategy[int] | None = None,
           tombstones: bool = True) -> st.SearchStrategy[Event]:
    """Valid events that collide (see the module docstring); tombstones about 1 in 4."""
    keys = keys if keys is not None else vm_keys()
    values = values if values is not None else json_values(max_leaves=4)
    version = version if version is not None else versions()
    writes = st.builds(Event, st.sampled_from(list(sources)), keys, version, values)
    if not tombstones:
        return writes
    deletes = st.builds(lambda s, k, v: Event(s, k, v, deleted=True),
                        st.sampled_from(list(sources)), keys, version)
    return st.one_of(writes, writes, writes, deletes)


#: Few keys of one document, nested in each other, for ``tight_events``.
TIGHT_KEYS = (("vms", "vm0"), ("vms", "vm0", "compute"), ("vms", "vm0", "compute", "name"),
              ("vms", "vm0", "compute", "0"), ("vms", "vm0", "network"))
#: Look-alike values (1, 1.0, True; lists and objects that deeper keys reach into).
TIGHT_VALUES = (0, 1, 1.0, True, None, "a", [1, 2], ["x"], {"name": "n", "0": 0}, {"a": [1]})


def tight_events() -> st.SearchStrategy[Event]:
    """Events that collide as much as possible: two sources, versions 0..1, a handful of
    nested keys of one document, look-alike values, tombstones. Nearly every pair of events
    ties on something, so order-dependence shows up at once."""
    return events(sources=("a", "b"), keys=st.sampled_from(TIGHT_KEYS),
                  values=st.sampled_from(TIGHT_VALUES), version=st.integers(0, 1))


def any_events() -> st.SearchStrategy[Event]:
    """Events spanning the whole contract: any source, key, version, value, tombstone, seq."""
    seqs = st.none() | st.integers(0, MAX_VERSION)
    writes = st.builds(lambda s, k, v, val, q: Event(s, k, v, val, seq=q),
                       source_names(), any_keys(), st.integers(0, MAX_VERSION),
                       json_values(), seqs)
    deletes = st.builds(lambda s, k, v, q: Event(s, k, v, deleted=True, seq=q),
                        source_names(), any_keys(), st.integers(0, MAX_VERSION), seqs)
    return st.one_of(writes, deletes)


def batches(event_strategy: st.SearchStrategy[Event] | None = None, *,
            min_size: int = 1, max_size: int = 10) -> st.SearchStrategy[list[Event]]:
    """Lists of events as one submission (duplicates allowed)."""
    return st.lists(event_strategy if event_strategy is not None else events(),
                    min_size=min_size, max_size=max_size)


@st.composite
def schedules(draw: st.DrawFn, n_events: int, *, max_batch: int = 4,
              duplicates: bool = True, interrupts: bool = True,
              restarts: bool = True) -> Schedule:
    """One replica's delivery of events ``0..n_events-1``: every event is delivered at least
    once, in any order, some several times (duplicates), some first lost in flight and
    delivered later (drop-then-redeliver), in batches of 1..``max_batch``, with crash and
    restart points anywhere (including right after a lost delivery)."""
    order: list[int] = list(draw(st.permutations(range(n_events))))
    if duplicates and n_events:
        for i in draw(st.lists(st.integers(0, n_events - 1), max_size=n_events)):
            order.insert(draw(st.integers(0, len(order))), i)
    # Each item: (event index, delivered?). Lost copies go before the last real delivery
    # of their event, so each drop is followed by a redelivery.
    items: list[tuple[int, bool]] = [(i, True) for i in order]
    if interrupts and n_events:
        for i in draw(st.lists(st.integers(0, n_events - 1), max_size=n_events, unique=True)):
            last = max(p for p, (j, ok) in enumerate(items) if j == i and ok)
            items.insert(draw(st.integers(0, last)), (i, False))
    steps: list[Step] = []
    pos = 0
    while pos < len(items):
        size = draw(st.integers(1, max_batch))
        chunk = items[pos:pos + size]
        # A batch is one message: split where delivered and lost items alternate.
        run: list[int] = []
        ok = chunk[0][1]
        for i, delivered in chunk:
            if delivered != ok:
                steps.append(Deliver(tuple(run)) if ok else Interrupt(tuple(run)))
                run, ok = [], delivered
            run.append(i)
        steps.append(Deliver(tuple(run)) if ok else Interrupt(tuple(run)))
        pos += size
        if restarts and draw(st.integers(0, 4)) == 0:
            steps.append(Restart())
    if restarts and draw(st.booleans()) and draw(st.booleans()):
        steps.insert(draw(st.integers(0, len(steps))), Restart())
    return Schedule(tuple(steps))


def schedule_sets(n_events: int, *, replicas: int = 5,
                  **options: Any) -> st.SearchStrategy[list[Schedule]]:
    """One independent ``schedules(n_events)`` per replica."""
    return st.lists(schedules(n_events, **options), min_size=replicas, max_size=replicas)


@st.composite
def convergence_cases(draw: st.DrawFn, *, max_events: int = 12, replicas: int = 5,
                      event_strategy: st.SearchStrategy[Event] | None = None,
                      ) -> tuple[list[Event], list[Schedule]]:
    """Events and one delivery schedule per replica: the input of ``check_convergence``.

    Without ``event_strategy``, each case draws its events either from ``events()`` (a
    whole fleet's variety) or from ``tight_events()`` (collisions everywhere)."""
    if event_strategy is None:
        event_strategy = draw(st.sampled_from([events(), tight_events()]))
    evs = draw(st.lists(event_strategy, min_size=1, max_size=max_events))
    # Rivals: events that tie with an earlier one as far as the order allows (same key and
    # version; same source too, or a neighbouring one), so the last tie-breaks decide.
    for i in draw(st.lists(st.integers(0, len(evs) - 1), max_size=max(0, max_events - len(evs)))):
        evs.append(draw(rivals(evs[i])))
    return evs, draw(schedule_sets(len(evs), replicas=replicas))


def rivals(event: Event) -> st.SearchStrategy[Event]:
    """Events on ``event``'s key at its version: from the same source with another value or
    a tombstone (the digest decides), from another source (the name decides), or the very
    same write delivered with another ``seq`` (none, or a small one: the smaller is kept,
    so only the seq decides)."""
    same = st.one_of(
        st.just(Event(event.source, event.key, event.version, deleted=True)),
        st.sampled_from(TIGHT_VALUES).map(
            lambda v: Event(event.source, event.key, event.version, v)),
    )
    other = st.sampled_from([s for s in SOURCES if s != event.source]).map(
        lambda s: Event(s, event.key, event.version, event.value, deleted=event.deleted))
    again = (st.none() | st.integers(0, 9)).map(
        lambda q: Event(event.source, event.key, event.version, event.value,
                        deleted=event.deleted, seq=q))
    return st.one_of(same, same, other, again)
