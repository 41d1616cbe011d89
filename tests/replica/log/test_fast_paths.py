"""The fast paths of ingest and replay give exactly what the plain paths give.

* ``View.apply_batch`` (every group commit) and ``View.load`` (recovery) == ``View.apply``
  event by event: flags, registers, digest, statistics, documents, change history; and the
  lazily synced sorted index agrees with the registers whatever reads come in between.
* ``Reducer.add_events`` (C-level update when versions grow) == a per-event LWW fold, and
  replay's whole-record fold (records decoded newest first, losers dropped whole) == folding
  every record in log order.
* ``View.load_stored`` (recovery's winners as stored tuples, Events built on first read)
  == ``View.load`` of the built Events, and so is everything done to the view afterwards.
* ``batch_payload`` writes the very bytes of the documented record layout.
* a cancelled ``append`` waiter does not disturb the appender.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from imds_replica import Checkpoint, Event, Horizons, View, open_replica
from imds_replica._event import Key
from imds_replica._horizon import CompactionState
from imds_replica._liveliness import newest_versions
from imds_replica._log import FileLog
from imds_replica._log._frame import (
    DEFAULT_MAX_RECORD_BYTES,
    RecordType,
    batch_payload,
    cursor_pair,
    event_tuple,
    pack,
    stored_digest,
    trusted_event,
)
from imds_replica._log._replay import Reducer, recover_directory
from imds_replica._merge import order_key
from imds_replica._view import CHANGE_HISTORY
from imds_replica.testing import _strategies as ist

event_lists = st.lists(st.one_of(ist.tight_events(), ist.events()), max_size=40)


def _state(view: View) -> dict[str, Any]:
    docs = {tuple(e.key[:view.document_depth]) for e in view.registers()}
    return {
        "registers": [(e.key, e.version, e.source, e.deleted, e.encoded, e.seq)
                      for e in view.registers()],
        "digest": view.digest(),
        "statistics": view.statistics(),
        "documents": {d: view.document_info(d) for d in sorted(docs)},
        "history": [view.changed_since(s) for s in range(-1, view.change_seq + 1)],
    }


@given(event_lists, event_lists)
def test_apply_batch_and_load_equal_apply_one_by_one(before: list[Event],
                                                     events: list[Event]) -> None:
    applied, batched, loaded = View(), View(), View()
    for view in (applied, batched, loaded):  # also into a view that already holds registers
        for e in before:
            view.apply(e)
    changed = [applied.apply(e) for e in events]
    assert batched.apply_batch(events) == tuple(changed)
    assert loaded.load(events) == sum(changed)
    assert _state(batched) == _state(applied)
    assert _state(loaded) == _state(applied)


@given(event_lists)
def test_apply_batch_with_a_subscriber_calls_it_as_apply_does(events: list[Event]) -> None:
    seen: dict[str, list[Any]] = {"apply": [], "batch": []}
    applied, batched = View(), View()
    applied.subscribe(lambda d: seen["apply"].append(d))
    batched.subscribe(lambda d: seen["batch"].append((d, batched.change_seq)))
    for e in events:
        applied.apply(e)
    batched.apply_batch(events)
    # The same changes in the same order, each heard once the whole batch is applied.
    assert [d for d, _ in seen["batch"]] == seen["apply"]
    assert all(seq == batched.change_seq for _, seq in seen["batch"])
    assert _state(batched) == _state(applied)


@given(event_lists)
def test_a_subscriber_reading_mid_batch_sees_and_leaves_a_whole_index(
        events: list[Event]) -> None:
    # The listener's ordered read syncs the index while apply_batch is still adding keys:
    # the keys added after it must not be lost (the batch holds the pending-key list).
    applied, batched = View(), View()
    reads: list[list[Key]] = []
    batched.subscribe(lambda d: reads.append([e.key for e in batched.registers(d)]))
    for e in events:
        applied.apply(e)
    batched.apply_batch(events)
    assert _state(batched) == _state(applied)
    assert all(keys == sorted(set(keys)) for keys in reads)


@given(st.lists(st.tuples(st.sampled_from(["apply", "read", "forget"]), event_lists),
                max_size=8))
def test_the_sorted_index_agrees_with_the_registers_across_reads(
        steps: list[tuple[str, list[Event]]]) -> None:
    view = View()
    model: dict[Key, Event] = {}
    for what, events in steps:
        if what == "apply":
            floors = view.compaction_state()  # what earlier compactions dropped
            for e in events:
                old = model.get(e.key)
                if old is None and floors.below_floor(e.source, e.version):
                    continue  # a late event under a dropped tombstone: a no-op
                if old is None or order_key(e) > order_key(old):
                    model[e.key] = e
            view.apply_batch(events)
        elif what == "read":
            assert [e.key for e in view.registers()] == sorted(model)
        else:
            horizon = events[0].version if events else 0
            sources = dict.fromkeys({e.source for e in model.values()}, horizon)
            view.compact(Horizons(hlc=horizon, sources=sources))
            kept = {k: e for k, e in model.items() if view.get(k) is not None}
            # Only tombstones below the horizon may go (those hiding something stay).
            assert all(e.deleted and e.version < horizon
                       for k, e in model.items() if k not in kept)
            model = kept
    assert [e.key for e in view.registers()] == sorted(model)
    assert len(view) == len(model)
    for prefix in {k[:2] for k in model}:
        assert [e.key for e in view.registers(prefix)] == sorted(
            k for k in model if k[:len(prefix)] == prefix)


def test_load_keeps_only_the_bounded_history() -> None:
    n = CHANGE_HISTORY + 10
    events = [Event("a", ("vms", f"vm{i % 7}", f"f{i}"), i, i) for i in range(n)]
    applied, loaded = View(), View()
    for e in events:
        applied.apply(e)
    loaded.load(events)
    assert loaded.change_seq == applied.change_seq == n
    for seq in (0, 9, 10, 11, n - CHANGE_HISTORY, n - 1, n):
        assert loaded.changed_since(seq) == applied.changed_since(seq)


def _reference_fold(batches: list[list[Event]]) -> dict[tuple[str, ...], tuple[Any, ...]]:
    """LWW by (version, source, digest); an exact tie keeps the first in log order."""
    best: dict[tuple[str, ...], tuple[Any, ...]] = {}
    for batch in batches:
        for e in batch:
            t = tuple(event_tuple(e))
            cur = best.get(e.key)
            if cur is None or (t[2], t[0], stored_digest(t)) > (
                    cur[2], cur[0], stored_digest(cur)):
                best[e.key] = (t[0], e.key, *t[2:])
    return best


growing = st.lists(st.integers(0, 3), min_size=1, max_size=12).map(
    lambda steps: [sum(steps[:i + 1]) for i in range(len(steps))])


@given(st.lists(st.one_of(
    st.lists(ist.tight_events(), min_size=1, max_size=6),
    # batches whose versions grow, so the fast path is taken (and sometimes not, when a
    # step is 0 or a later batch starts below an earlier one)
    st.tuples(growing, st.lists(st.sampled_from(ist.TIGHT_KEYS), min_size=12, max_size=12),
              st.sampled_from(["a", "b"]), st.integers(0, 40)).map(
        lambda a: [Event(a[2], k, v + a[3], v) for v, k in zip(a[0], a[1], strict=False)]),
), max_size=12))
def test_reducer_fast_path_equals_per_event_fold(batches: list[list[Event]]) -> None:
    reducer = Reducer()
    for batch in batches:
        reducer.add_events([(e.source, e.key, e.version, e.deleted, e.encoded, e.seq)
                            for e in batch])
    assert reducer.best == _reference_fold(batches)


@given(st.lists(ist.any_events(), max_size=5), st.none() | st.integers(0, 99))
def test_batch_payload_bytes_are_the_documented_layout(events: list[Event],
                                                       cursor: int | None) -> None:
    cp = None if cursor is None else Checkpoint("src", {"pos": cursor})
    expected = msgpack.packb(
        [[[e.source, list(e.key), e.version, e.deleted, e.encoded, e.seq] for e in events],
         None if cp is None else [cp.source, msgpack.packb(cp.cursor, use_bin_type=True)]],
        use_bin_type=True)
    assert batch_payload(events, cp) == expected


async def test_cancelled_waiter_leaves_the_log_working(tmp_path: Path) -> None:
    log = FileLog(tmp_path / "log", snapshot_every=None)
    view = View()
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, view)
        with trio.move_on_after(0) as scope:  # cancelled at its first checkpoint
            await log.append([Event("a", ("k", "1"), 1, 1)])
        assert scope.cancelled_caught
        assert await log.append([Event("a", ("k", "2"), 2, 2)]) == (True,)
        results = []

        async def one(i: int) -> None:
            results.append(await log.append([Event("a", ("k", str(i)), i, i)]))

        async with trio.open_nursery() as inner:
            for i in range(10, 60):
                inner.start_soon(one, i)
        assert results == [(True,)] * 50
        nursery.cancel_scope.cancel()
    # The cancelled batch was queued before the cancel: written and applied like the rest.
    rec = recover_directory(tmp_path / "log", writable=False, fsync=False,
                            max_record=DEFAULT_MAX_RECORD_BYTES)
    assert set(rec.reducer.best) == {e.key for e in view.registers()}
    assert ("k", "1") in rec.reducer.best


async def test_largest_seq_and_version_round_trip_through_the_log(tmp_path: Path) -> None:
    # The validation bounds must fit the log's integer encoding: the extreme event is
    # durable and comes back identical (it once crashed the appender instead).
    extreme = Event("s", ("k", "x"), 2**63 - 1, 2**64 - 1, seq=2**63 - 1)
    async with open_replica(FileLog(tmp_path / "log")) as replica:
        await replica.submit([extreme])
    view = View()
    async with open_replica(FileLog(tmp_path / "log"), view=view):
        pass
    got = view.get(("k", "x"))
    assert got == extreme
    assert got is not None
    assert got.seq == extreme.seq


def _stored_winners(events: list[Event]) -> dict[Key, tuple[Any, ...]]:
    reducer = Reducer()
    reducer.add_events([(e.source, e.key, e.version, e.deleted, e.encoded, e.seq)
                        for e in events])
    return reducer.take_winners()


@given(event_lists, event_lists, st.sampled_from([1, 2, 3]))
def test_load_stored_equals_load_of_built_events(events: list[Event], more: list[Event],
                                                 depth: int) -> None:
    """Into a fresh view, the stored tuples (no Event built) end in ``load``'s state:
    registers, digest, statistics, documents, change numbers and history; and so does
    everything done to it afterwards (writes over stored registers, compaction)."""
    winners = _stored_winners(events)
    built = [trusted_event(t) for t in winners.values()]
    loaded, stored = View(document_depth=depth), View(document_depth=depth)
    assert stored.load_stored(dict(winners)) == loaded.load(built)
    assert stored.newest_versions() == newest_versions(built)
    assert _state(stored) == _state(loaded)
    stored2, loaded2 = View(document_depth=depth), View(document_depth=depth)
    stored2.load_stored(dict(winners))
    loaded2.load(built)
    assert stored2.apply_batch(more) == loaded2.apply_batch(more)
    horizons = Horizons(hlc=3, sources=dict.fromkeys({e.source for e in events + more}, 3))
    assert stored2.compact(horizons) == loaded2.compact(horizons)
    assert _state(stored2) == _state(loaded2)


def test_load_stored_into_a_view_in_use_is_load() -> None:
    winners = _stored_winners([Event("a", ("vms", "v", "x"), 5, 1)])
    seen: list[Key] = []
    view = View()
    view.subscribe(seen.append)
    assert view.load_stored(winners) == 1
    assert seen == [("vms", "v")]  # a listener hears the load, as with ``load``
    view.apply(Event("a", ("vms", "w", "y"), 1, 1))
    assert view.load_stored(_stored_winners([Event("a", ("vms", "v", "x"), 6, 2)])) == 1
    got = view.get(("vms", "v", "x"))
    assert got is not None
    assert got.value == 2



def _answers(view: View, first: str, prefixes: list[Key]) -> dict[str, Any]:
    """Every query of a view; ``first`` is asked before anything else, so a lazily loaded
    view answers it with no register built and no document built yet."""
    depth = view.document_depth
    queries = {
        "documents": lambda: {p[:depth]: view.document_info(p[:depth]) for p in prefixes},
        "statistics": view.statistics,
        "document": lambda: {p: view.document(p) for p in prefixes},
        "max_version": lambda: {p: view.max_version(p) for p in prefixes},
        "get": lambda: {p: view.get(p) for p in prefixes},
        "newest": view.newest_versions,
        "digest": lambda: (view.digest(), view.content_digest()),
        "history": lambda: [view.changed_since(s) for s in range(-1, view.change_seq + 1)],
        "registers": lambda: list(view.registers()),
        "state": lambda: (view.change_seq, view.compaction_state()),
    }
    answers = {first: queries[first]()}
    answers.update((name, ask()) for name, ask in queries.items() if name != first)
    return answers


_QUERIES = ["documents", "statistics", "document", "max_version", "get", "newest",
            "digest", "history", "registers", "state"]


@given(event_lists, event_lists, st.sampled_from([1, 2, 3]), st.sampled_from(_QUERIES),
       st.sampled_from(_QUERIES), st.sampled_from([0, 1, 7]))
def test_lazy_load_answers_as_an_eager_load_resumed(events: list[Event], more: list[Event],
                                                    depth: int, first: str, later: str,
                                                    bump: int) -> None:
    """``load_stored(lazy=True)`` (documents built on first use) answers every query as
    ``load_stored`` followed by ``resume_changes`` does (every counter at the load's last
    change number, the history forgotten), whatever is asked first; and so it does after
    further applies (new keys, overwrites, tombstones), a ``restore``, compaction and a
    second ``resume_changes``."""
    winners = _stored_winners(events)
    lazy, eager = View(document_depth=depth), View(document_depth=depth)
    assert lazy.load_stored(dict(winners), lazy=True) == eager.load_stored(dict(winners))
    # Resumed above the load (as recovery does): the eager view's counters flatten, its
    # history is forgotten. (The lazy view unresumed: test_lazy_load_counts_documents...)
    lazy.resume_changes(lazy.change_seq + 1 + bump)
    eager.resume_changes(eager.change_seq + 1 + bump)
    prefixes = sorted({k[:i] for k in list(winners) + [e.key for e in more]
                       for i in range(1, len(k) + 1)})
    assert _answers(lazy, first, prefixes) == _answers(eager, first, prefixes)
    # The same, after writes and compaction into views where some documents are built.
    lazy2, eager2 = View(document_depth=depth), View(document_depth=depth)
    lazy2.load_stored(dict(winners), lazy=True)
    eager2.load_stored(dict(winners))
    seen: dict[str, list[Key]] = {"lazy": [], "eager": []}
    lazy2.subscribe(seen["lazy"].append)
    eager2.subscribe(seen["eager"].append)
    eager2.resume_changes(eager2.change_seq + 1 + bump)
    lazy2.resume_changes(lazy2.change_seq + 1 + bump)
    if later == "documents" and prefixes:
        lazy2.document_info(prefixes[0][:depth])
    assert lazy2.apply_batch(more) == eager2.apply_batch(more)
    assert seen["lazy"] == seen["eager"]
    state = CompactionState(hlc_floor=-1, floors={}, marks={p: 50 for p in prefixes[:3]},
                            change_seq=lazy2.change_seq + 2)
    lazy2.restore(state)
    eager2.restore(state)
    horizons = Horizons(hlc=3, sources=dict.fromkeys({e.source for e in events + more}, 3))
    assert lazy2.compact(horizons) == eager2.compact(horizons)
    assert seen["lazy"] == seen["eager"]
    assert _answers(lazy2, later, prefixes) == _answers(eager2, later, prefixes)


def test_lazy_load_counts_documents_built_and_not() -> None:
    winners = _stored_winners([Event("a", ("vms", v, f), 5, 1) for v in "xyz" for f in "pq"]
                              + [Event("b", ("vms", "y", "r"), 6, deleted=True)])
    view = View()
    assert view.load_stored(winners, lazy=True) == 7
    info = view.document_info(("vms", "y"))
    assert info is not None
    assert (info.counter, info.sources, info.max_version) == (7, frozenset("ab"), 6)
    assert view.statistics().documents == 3  # one built, two not
    assert view.document_info(("vms", "w")) is None
    view.apply(Event("a", ("vms", "w", "p"), 7, 1))  # a new document
    view.apply(Event("a", ("vms", "z", "p"), 8, 1))  # an unbuilt one, built first
    assert view.statistics().documents == 4
    z = view.document_info(("vms", "z"))
    assert z is not None
    assert (z.counter, z.max_version) == (9, 8)
    assert view.changed_since(6) is None  # the load's history is not kept
    assert view.changed_since(7) == frozenset({("vms", "w"), ("vms", "z")})
    x = view.document_info(("vms", "x"))
    assert x is not None
    assert x.counter == 7
    assert view.statistics().tombstones == 1


def test_lazy_load_of_a_key_shallower_than_a_document_is_eager() -> None:
    winners = _stored_winners([Event("a", ("vms",), 5, 1), Event("a", ("vms", "x", "p"), 6, 1)])
    lazy, eager = View(), View()
    lazy.load_stored(dict(winners), lazy=True)
    eager.load_stored(dict(winners))
    assert _state(lazy) == _state(eager)

#: Key lists that recur (so whole records repeat their keys), one with a key twice.
_KEY_LISTS = [[("vms", "a", "x"), ("vms", "a", "y")], [("vms", "b", "x")],
              [("vms", "a", "x"), ("vms", "a", "y"), ("vms", "a", "x")], [("k",)],
              [("vms", "b", "x"), ("vms", "a", "y")]]
_records = st.lists(st.one_of(
    # a batch over a recurring key list: versions from a base (growing, equal, or falling
    # with log position) plus steps, so ranges overlap, tie and are disjoint both ways
    st.tuples(st.just("batch"), st.sampled_from(range(len(_KEY_LISTS))),
              st.sampled_from([0, 1, 2, 3, 10, 20, 30]),
              st.lists(st.integers(-1, 2), min_size=3, max_size=3),
              st.sampled_from(["a", "b"]), st.booleans(), st.none() | st.integers(0, 9)),
    st.tuples(st.just("empty"), st.none() | st.integers(0, 9)),
    st.tuples(st.just("checkpoint"), st.integers(0, 9)),
), max_size=30)


def _record(spec: tuple[Any, ...]) -> tuple[int, bytes]:
    if spec[0] == "checkpoint":
        return int(RecordType.CHECKPOINT), pack(cursor_pair(Checkpoint("c", spec[1])))
    if spec[0] == "empty":
        cp = None if spec[1] is None else Checkpoint("b", spec[1])
        return int(RecordType.BATCH), batch_payload([], cp)
    _, which, base, steps, source, deleted, cursor = spec
    events = [Event(source, key, max(0, base + steps[i % 3]), None if deleted else base % 2,
                    deleted=deleted) for i, key in enumerate(_KEY_LISTS[which])]
    cp = None if cursor is None else Checkpoint("b", cursor)
    return int(RecordType.BATCH), batch_payload(events, cp)


@settings(max_examples=300)
@given(_records, st.sampled_from([1, 64, 10**9]), st.lists(st.integers(0, 30), max_size=3))
def test_whole_record_fold_equals_folding_every_record(
        specs: list[tuple[Any, ...]], window: int, segment_ends: list[int]) -> None:
    """Replay's whole-record fold (batches kept as bytes, decoded newest first, records
    that lose every event dropped) gives the winners, cursors and counters of folding
    every record in log order, whatever the windows (``WINDOW_BYTES``, segment ends)."""
    records = [_record(spec) for spec in specs]
    eager, deferred = Reducer(), Reducer()
    deferred.WINDOW_BYTES = window
    for i, (rtype, payload) in enumerate(records):
        eager.add_record(rtype, memoryview(payload))
        deferred.add_record(rtype, memoryview(payload), ("seg", i))
        if i in segment_ends:
            deferred.flush()
    assert deferred.best == eager.best
    assert deferred.checkpoints == eager.checkpoints
    assert deferred.counters == eager.counters
    assert (deferred.records, deferred.batches, deferred.events) == (
        eager.records, eager.batches, eager.events)


def test_whole_record_fold_drops_records_that_lose_every_event() -> None:
    """The point of it: the older copies of a re-pushed key list are never folded."""
    keys = _KEY_LISTS[0]
    reducer = Reducer()
    for n in range(10):
        payload = batch_payload([Event("a", k, 10 * n + i, n) for i, k in enumerate(keys)],
                                None)
        reducer.add_record(int(RecordType.BATCH), memoryview(payload), ("seg", n))
    reducer.flush()
    assert [entry[0] is not None for entry in reducer._kept] == [True]
    assert {k: t[2] for k, t in reducer.best.items()} == {keys[0]: 90, keys[1]: 91}
    assert reducer.events == 20
