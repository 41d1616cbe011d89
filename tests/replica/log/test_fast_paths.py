"""The fast paths of ingest and replay give exactly what the plain paths give.

* ``View.apply_batch`` (every group commit) and ``View.load`` (recovery) == ``View.apply``
  event by event: flags, registers, digest, statistics, documents, change history; and the
  lazily synced sorted index agrees with the registers whatever reads come in between.
* ``Reducer.add_events`` (C-level update when versions grow) == a per-event LWW fold.
* ``batch_payload`` writes the very bytes of the documented record layout.
* ``gc_paused`` nests and restores the collector's state.
* a cancelled ``append`` waiter does not disturb the appender.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import msgpack
import trio
from hypothesis import given
from hypothesis import strategies as st

from imds_replica import Checkpoint, Event, View, open_replica
from imds_replica._event import Key
from imds_replica._log import FileLog
from imds_replica._log._frame import (
    DEFAULT_MAX_RECORD_BYTES,
    batch_payload,
    event_tuple,
    stored_digest,
)
from imds_replica._log._replay import Reducer, gc_paused, recover_directory
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
            for e in events:
                if (old := model.get(e.key)) is None or order_key(e) > order_key(old):
                    model[e.key] = e
            view.apply_batch(events)
        elif what == "read":
            assert [e.key for e in view.registers()] == sorted(model)
        else:
            horizon = events[0].version if events else 0
            view.forget_tombstones(horizon)
            model = {k: e for k, e in model.items()
                     if not (e.deleted and e.version < horizon)}
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


def test_gc_paused_nests_and_restores() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # it was off before: left off
    finally:
        gc.enable()


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
    extreme = Event("s", ("k",), 2**63 - 1, 2**64 - 1, seq=2**63 - 1)
    async with open_replica(FileLog(tmp_path / "log")) as replica:
        await replica.submit([extreme])
    view = View()
    async with open_replica(FileLog(tmp_path / "log"), view=view):
        pass
    got = view.get(("k",))
    assert got == extreme
    assert got is not None
    assert got.seq == extreme.seq
