"""FileLog behaviour: group commit, rotation, snapshots, compaction, storage errors."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from imds_replica import (
    Checkpoint,
    Event,
    Horizons,
    LogUnavailable,
    StorageError,
    ValidationError,
    View,
    hlc_version,
)
from imds_replica._log import FileLog
from imds_replica._log._compact import write_generation
from imds_replica._log._replay import recover_directory
from imds_replica._log._segment import Meta, SegmentWriter, write_meta
from imds_replica._replica import open_replica

from ..._loop import loop_ticks
from ._helpers import (
    FailingFdatasync,
    append_group,
    eventually,
    make_batches,
    only_segment,
    reopen,
    replay_view,
    stored,
    write_log,
)


async def test_group_commit_gathers_concurrent_batches(tmp_path: Path) -> None:
    commits: list[tuple[int, float]] = []
    log = FileLog(tmp_path / "log", on_commit=lambda n, s: commits.append((n, s)))
    view = View()
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, view)
        async with trio.open_nursery() as writers:
            for w in range(64):
                writers.start_soon(log.append, [Event("s", ("k", str(w)), 1, w)])
        stats = log.statistics()
        nursery.cancel_scope.cancel()
    assert sum(n for n, _ in commits) == 64
    assert max(n for n, _ in commits) > 1  # batches that waited on an fsync went together
    assert stats.commits == len(commits) == stats.fsyncs
    assert stats.last_group_size == commits[-1][0]
    assert stats.fsync_seconds == pytest.approx(sum(s for _, s in commits))
    assert (stats.batches, stats.events, stats.records) == (64, 64, 64)
    assert len(view) == 64


async def test_rotation_snapshots_and_restart(tmp_path: Path) -> None:
    batches = make_batches(2000, seed=3)
    live = await write_log(tmp_path / "log", batches, segment_bytes=4096, snapshot_every=500,
                           compact_ratio=None)
    assert len(list((tmp_path / "log").glob("*.seg"))) > 5
    assert len(list((tmp_path / "log").glob("*.snap"))) == 1  # only the newest is kept
    view, recovery = await reopen(tmp_path / "log", segment_bytes=4096)
    assert view.digest() == live.digest() == replay_view(batches).digest()
    assert any("started from snapshot" in note for note in recovery.notes)
    assert recovery.events == len(stored(batches)[1])
    expected = {}
    for _, cp in batches:
        if cp is not None:
            expected[cp.source] = cp.cursor
    assert dict(recovery.checkpoints) == expected


async def test_log_compacts_itself_when_mostly_dead(tmp_path: Path) -> None:
    batches = make_batches(3000, seed=5, keys=10)
    live = await write_log(tmp_path / "log", batches, segment_bytes=4096, snapshot_every=200)
    meta = json.loads((tmp_path / "log" / "imds-log.json").read_text())
    assert meta["generation"] > 1
    assert all(int(p.name[:8]) == meta["generation"] for p in (tmp_path / "log").glob("*.seg"))
    view, _ = await reopen(tmp_path / "log")
    assert view.digest() == live.digest()


async def test_compaction_keeps_winners_and_drops_old_tombstones(tmp_path: Path) -> None:
    batches = make_batches(3000, seed=4, keys=20)
    # Counter versions: only tombstones of sources given explicit horizons are dropped.
    horizons = Horizons(sources={"fabric": 2990, "tags": 2990})
    log = FileLog(tmp_path / "log", fsync="none", tombstone_horizon=lambda: horizons,
                  snapshot_every=None)
    view = View()
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, view)
        for events, cp in batches:
            await log.append(events, cp)
        before = view.statistics().tombstones
        assert any(e.deleted and e.version < 2990 for e in view.registers())
        droppable = sum(e.deleted and e.version < 2990 for e in view.registers())
        result = await log.compact()
        await log.append([Event("s", ("after", "x"), 1, "compaction")])
        stats = log.statistics()
        nursery.cancel_scope.cancel()
    assert result.bytes_after < result.bytes_before / 5
    assert result.tombstones_dropped > 0
    assert view.statistics().tombstones == before - result.tombstones_dropped
    assert result.tombstones_dropped == droppable  # none of these hide anything
    assert all(not e.deleted or e.version >= 2990 for e in view.registers())
    assert stats.generation == 2
    assert stats.compactions == 1
    assert sorted(p.name[:8] for p in (tmp_path / "log").glob("*.seg")) == ["00000002"]
    recovered, recovery = await reopen(tmp_path / "log")
    assert recovered.digest() == view.digest()
    assert "fabric" in recovery.checkpoints


T = hlc_version(1_800_000_000_000)
VM = ("vms", "a")


async def test_compaction_never_unhides_deleted_data_and_leaves_floors(tmp_path: Path) -> None:
    # Findings 1, 2, 8: the tombstone under an older live value stays; the one that hides
    # nothing goes, and leaves a floor, version marks and change numbers that survive
    # restarts, snapshots and a later compaction.
    log_dir = tmp_path / "log"
    log = FileLog(log_dir, fsync="none", tombstone_horizon=lambda: T + 100,
                  snapshot_every=None, compact_ratio=None)
    view = View()
    late = Event("poll", (*VM, "old"), T + 1, "stale")
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, view)
        await log.append([Event("fabric", (*VM, "compute"), T, {"name": "vm-a", "secret": "s"}),
                          late])
        await log.append([Event("admin", (*VM, "compute", "secret"), T + 2, deleted=True),
                          Event("admin", (*VM, "old"), T + 3, deleted=True)])
        info = view.document_info(VM)
        seq = view.change_seq
        result = await log.compact()
        assert result.tombstones_dropped == 1
        assert view.document(VM) == {"compute": {"name": "vm-a"}}
        assert await log.append([late]) == (False,)  # a late redelivery: a no-op
        await log.snapshot()
        nursery.cancel_scope.cancel()
    assert info is not None
    for use_snapshot in (True, False):
        if not use_snapshot:
            for snap in log_dir.glob("*.snap"):
                snap.unlink()
        again, _ = await reopen(log_dir)
        assert again.document(VM) == {"compute": {"name": "vm-a"}}
        assert again.get((*VM, "old")) is None  # the late event stays a no-op on replay
        got = again.document_info(VM)
        assert got is not None
        assert (got.etag, got.max_version) == (info.etag, info.max_version)
        assert again.change_seq > seq
        assert got.counter >= info.counter
        assert again.max_version((*VM, "old")) == T + 3
    # A later compaction (the offline tool) keeps the floor.
    assert cli_compact(log_dir) == 0
    again, _ = await reopen(log_dir)
    assert again.statistics().floor_noops == 0
    assert not again.apply(late)
    assert again.statistics().floor_noops == 1


def cli_compact(directory: Path) -> int:
    from imds_replica._cli import main

    return main(["log", "compact", "--tombstones-before", str(T + 100), str(directory)])


async def test_recovery_lets_other_tasks_run(tmp_path: Path) -> None:
    batches = [([Event("s", ("k", str(i)), 1, i) for i in range(j, j + 100)], None)
               for j in range(0, 20_000, 100)]
    await write_log(tmp_path / "log", batches, snapshot_every=None)
    async with loop_ticks() as ticks, trio.open_nursery() as nursery:
        await nursery.start(FileLog(tmp_path / "log", fsync="none").run, View())
        assert ticks() > 5
        nursery.cancel_scope.cancel()


async def test_fsync_error_makes_the_log_read_only_until_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14.1, fsyncgate: a failed fsync is never retried; that batch fails (503), the
    log refuses writes until a restart, and the log task (and so the server) lives on."""
    failing = FailingFdatasync(monkeypatch)
    log = FileLog(tmp_path / "log", snapshot_every=None)
    view = View()
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, view)
        await log.append([Event("s", ("a",), 1, 1)])
        await log.append([Event("s", ("b",), 1, 2)])
        digest = view.digest()
        failing.armed = True
        with pytest.raises(LogUnavailable, match="Input/output error") as info:
            await log.append([Event("s", ("c",), 1, 3)])
        assert (info.value.status, info.value.reason) == (503, "failed")
        assert info.value.retry_after > 0
        assert view.digest() == digest  # the failed batch was never applied
        failing.restore()  # even once the disk "works" again: read-only until restart
        await trio.sleep(0.2)
        with pytest.raises(LogUnavailable, match="until the process restarts"):
            await log.append([Event("s", ("d",), 1, 4)])
        stats = log.statistics()
        assert (stats.failed, stats.writable, stats.state) == (True, False, "failed")
        assert view.document(("a",)) == 1  # reads are the view's: served throughout
        nursery.cancel_scope.cancel()
    assert failing.calls == 1  # no retry, no further fsync
    recovered, _ = await reopen(tmp_path / "log")
    assert recovered.document(("a",)) == 1
    assert recovered.document(("b",)) == 2
    assert recovered.document(("d",)) is None


async def test_partial_write_on_a_full_disk_is_cut_and_writes_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails half-way (ENOSPC) fails its batch and is cut off at once; the
    log refuses writes while the disk is full and takes them again once space is back."""
    real = SegmentWriter.write
    full = True

    def half(self: SegmentWriter, data: bytes) -> float:
        if full:
            os.write(self._fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    spaces = [0]
    monkeypatch.setattr(SegmentWriter, "write", half)
    monkeypatch.setattr(FileLog, "_free_bytes", lambda self: spaces[-1])
    log = FileLog(tmp_path / "log", fsync="none", retry_seconds=0.01)
    view = View()
    segment = None
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, view)
        full = False
        await log.append([Event("s", ("a",), 1, "fine")])
        segment = only_segment(tmp_path / "log")
        size = segment.stat().st_size
        full = True
        with pytest.raises(LogUnavailable, match="No space left") as info:
            await log.append([Event("s", ("b",), 1, "boom"), Event("s", ("c",), 1, 2)])
        assert (info.value.status, info.value.reason) == (503, "full")
        assert segment.stat().st_size == size  # the partial group is already cut off
        assert view.document(("b",)) is None
        await trio.sleep(0.1)  # no space yet: still refused, without touching the disk
        with pytest.raises(LogUnavailable, match="No space left"):
            log.append_nowait([Event("s", ("d",), 1, 4)])
        assert log.statistics().state == "full"
        full = False
        spaces.append(10**9)
        await eventually(lambda: log.statistics().writable)
        assert await log.append([Event("s", ("e",), 1, 5)]) == (True,)
        nursery.cancel_scope.cancel()
    monkeypatch.setattr(SegmentWriter, "write", real)
    recovered, recovery = await reopen(tmp_path / "log")
    assert recovered.digest() == view.digest()
    assert recovered.document(("e",)) == 5
    assert not any("torn tail" in note for note in recovery.notes), recovery.notes


async def test_oversized_batch_is_refused_and_log_carries_on(tmp_path: Path) -> None:
    log = FileLog(tmp_path / "log", fsync="none", max_record_bytes=10_000)
    view = View()
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, view)
        with pytest.raises(ValidationError, match="per batch"):
            await log.append([Event("s", ("k", str(i)), 1, "x" * 1000) for i in range(20)])
        assert await log.append([Event("s", ("ok",), 1, 1)]) == (True,)
        nursery.cancel_scope.cancel()
    assert len(view) == 1


async def test_second_writer_and_misuse_are_refused(tmp_path: Path) -> None:
    log = FileLog(tmp_path / "log", fsync="none")
    with pytest.raises(RuntimeError):
        await log.append([Event("s", ("k",), 1, 1)])
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, View())
        with pytest.raises(StorageError, match="in use by another process"):
            await FileLog(tmp_path / "log").run(View())
        nursery.cancel_scope.cancel()
    with pytest.raises(StorageError, match="closed"):
        await log.append([Event("s", ("k",), 1, 1)])


def test_bad_configuration_is_refused(tmp_path: Path) -> None:
    from imds_replica import ConfigError
    bad: list[dict[str, Any]] = [{"fsync": "sometimes"}, {"segment_bytes": 10},
                                 {"snapshot_every": 0}, {"max_queued_bytes": 0}]
    for kwargs in bad:
        with pytest.raises(ConfigError):
            FileLog(tmp_path, **kwargs)


async def test_checkpoint_with_list_cursor_round_trips(tmp_path: Path) -> None:
    await write_log(tmp_path / "log", [([Event("s", ("k",), 1, 1)], Checkpoint("s", [1, "a"]))])
    _, recovery = await reopen(tmp_path / "log")
    assert recovery.checkpoints == {"s": [1, "a"]}


@pytest.mark.parametrize("step", ["written", "switched"])
async def test_compaction_interrupted_after_each_step(tmp_path: Path, step: str) -> None:
    """Old or new generation, each complete; the other's files are removed on open."""
    directory = tmp_path / "log"
    live = await write_log(directory, make_batches(1000), snapshot_every=200,
                           compact_ratio=None, segment_bytes=4096)
    rec = recover_directory(directory, writable=False, fsync=False, max_record=2**26)
    written = write_generation(directory, 2, rec.reducer.winners(), rec.reducer.checkpoints,
                               segment_bytes=4096, fsync=False)
    if step == "switched":
        write_meta(directory, Meta(2, salt=written.salt, sealed=(written.segments, written.end)),
                   fsync=False)
    (directory / "00000001-00000003-000000000016.snap.tmp").write_bytes(b"half a snapshot")
    view, recovery = await reopen(directory)
    assert view.digest() == live.digest()
    assert any("leftover" in note for note in recovery.notes)
    generations = {p.name[:8] for p in directory.iterdir() if p.suffix in (".seg", ".snap")}
    assert generations == {"00000002" if step == "switched" else "00000001"}
    assert not list(directory.glob("*.tmp"))


async def test_a_raising_listener_is_contained_and_the_batch_is_not_reported_lost(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Finding 10: listeners run after the whole group is applied; one that raises is
    logged, the others still hear every change, and the durable batch is acknowledged."""
    view = View()
    heard: list[tuple[str, ...]] = []
    seen_state: list[int] = []

    def bad(doc_key: tuple[str, ...]) -> None:
        seen_state.append(len(view))  # runs after the whole group: every register is there
        raise RuntimeError("listener bug")

    view.subscribe(bad)
    view.subscribe(heard.append)
    log = FileLog(tmp_path / "log", fsync="none")
    batch = [Event("s", ("vms", name, "compute", "name"), 1, name) for name in "abc"]
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, view)
        assert await log.append(batch) == (True, True, True)
        assert await log.append([Event("s", ("vms", "d", "compute", "name"), 1, "d")]) == (True,)
        nursery.cancel_scope.cancel()
    assert heard == [("vms", "a"), ("vms", "b"), ("vms", "c"), ("vms", "d")]
    assert seen_state[:3] == [3, 3, 3]
    assert "listener bug" in caplog.text
    again, _ = await reopen(tmp_path / "log")
    assert again.digest() == view.digest()


async def test_an_empty_or_no_change_batch_appends_nothing(tmp_path: Path) -> None:
    """Issue 17: an agent that re-pushes its full state must not grow the log; a cursor
    advance alone is one small checkpoint record."""
    batch = [Event("agent", ("vms", "a", "compute", f"f{i}"), 5, {"i": i, "pad": "x" * 200})
             for i in range(20)]
    log = FileLog(tmp_path / "log", fsync="none")
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, View())
        await log.append(batch, Checkpoint("agent", 1))
        before = log.statistics()
        assert await log.append(batch, Checkpoint("agent", 1)) == (False,) * 20
        assert await log.append([]) == ()
        older = [Event("agent", e.key, 4, "stale") for e in batch]
        assert await log.append(older) == (False,) * 20
        same = log.statistics()
        assert (same.bytes, same.records, same.fsyncs) == \
            (before.bytes, before.records, before.fsyncs)
        await log.append(batch, Checkpoint("agent", 2))
        after = log.statistics()
        assert after.records == before.records + 1
        assert after.bytes - before.bytes < 64  # the cursor, not the 20 events again
        receipts = [log.append_nowait(batch) for _ in range(3)]
        receipts.append(log.append_nowait([Event("agent", ("vms", "b"), 9, 1)]))
        receipts.append(log.append_nowait(batch))
        await receipts[-1].wait()
        assert [r.done for r in receipts] == [True] * 5
        assert receipts[3].result() == (True,)
        nursery.cancel_scope.cancel()
    _, recovery = await reopen(tmp_path / "log")
    assert recovery.checkpoints == {"agent": 2}


def _registers_with_seq(view: View) -> list[tuple[Any, ...]]:
    return [(e.key, e.source, e.version, e.digest, e.seq) for e in view.registers()]


@pytest.mark.parametrize("other_seq", [3, None])
async def test_replicas_fed_a_redelivery_in_either_order_hold_the_same_register(
        tmp_path: Path, other_seq: int | None) -> None:
    """The tie rule keeps the smaller seq (none before any) of two deliveries of one write;
    the log must not skip the second one as "changes nothing" when it wins on seq alone."""
    first = Event("fleet", ("vms", "vm1", "compute", "name"), 7, "web-1", seq=5)
    again = Event("fleet", first.key, 7, "web-1", seq=other_seq)
    other = Event("fleet", ("vms", "vm1", "compute", "zone"), 7, "1", seq=6)
    orders = {"ab": [[first, other], [again]], "ba": [[again], [first, other]]}
    live: dict[str, list[tuple[Any, ...]]] = {}
    for name, batches in orders.items():
        async with open_replica(FileLog(tmp_path / name, fsync="none")) as replica:
            for batch in batches:
                await replica.submit(batch)
            live[name] = _registers_with_seq(replica.view)
            assert replica.view.get(first.key).seq == other_seq  # type: ignore[union-attr]
    assert live["ab"] == live["ba"]
    for name in orders:  # and the log agrees with the view it fed: after a restart too
        async with open_replica(FileLog(tmp_path / name, fsync="none")) as replica:
            assert _registers_with_seq(replica.view) == live[name]


async def test_records_with_fields_a_later_release_appends_still_read(tmp_path: Path) -> None:
    """Payloads are read by position: a BATCH, its checkpoint pair and a CHECKPOINT with
    extra trailing elements (e.g. a last-contact time next to a cursor) still replay."""
    from imds_replica._codec import encode
    from imds_replica._log._frame import RecordType, frame, pack

    await write_log(tmp_path / "log", [([Event("s", ("a",), 1, 1)], Checkpoint("s", 1))])
    event = ["s", ["b"], 2, False, encode(2), None]
    append_group(only_segment(tmp_path / "log"),
                 frame(RecordType.BATCH, pack([[event], ["s", encode({"at": 2}), 12.5, "later"],
                                               {"new": 1}])),
                 frame(RecordType.CHECKPOINT, pack(["t", encode([3]), None, {"later": 9}])))
    view, recovery = await reopen(tmp_path / "log")
    assert view.document(("b",)) == 2
    assert recovery.checkpoints == {"s": {"at": 2}, "t": [3]}
    assert recovery.contacts == {"s": 12.5}
