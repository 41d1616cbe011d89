"""Log format v2: a torn final group commit is cut whatever its bytes hold (finding 11),
sealed records are never taken for a torn write (finding 13), and every byte of a group
commit of several records, and of a compacted generation, is checked."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import trio

from imds_replica import Checkpoint, CorruptLogError, Event, View
from imds_replica._log import FileLog, compact_log, repair_log, verify_log
from imds_replica._log._frame import RecordType, crc32c, frame

from ._helpers import make_batches, only_segment, reopen, replay_view, write_log


def _utf8_frame(rtype: int, salt: int = 0) -> str:
    """A whole record (good CRC, known type) whose bytes are all ASCII: any tenant string
    (a tag, a name) can carry one into the log."""
    for n in range(100_000):
        payload = f"forged-{n}".encode()
        raw = frame(rtype, payload)
        if salt:
            body = raw[4:]
            raw = crc32c(body, salt).to_bytes(4, "little") + body
        if all(b < 0x80 for b in raw):
            return raw.decode("ascii")
    raise AssertionError("no ASCII frame found")


async def _refused(directory: Path) -> None:
    """Reopen, expecting a CorruptLogError (unwrapped from the nursery's group)."""
    with pytest.raises(ExceptionGroup) as info:
        await reopen(directory)
    assert info.group_contains(CorruptLogError), info.value


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.is_file() and p.name != "LOCK"}


@pytest.mark.parametrize("rtype", [int(RecordType.CHECKPOINT), int(RecordType.BATCH), 6])
async def test_torn_tail_holding_a_valid_looking_frame_is_truncated(
        tmp_path: Path, rtype: int) -> None:
    directory = tmp_path / "log"
    batches = make_batches(60, seed=11)
    forged = _utf8_frame(rtype)
    tail = ([Event("tenant", ("vms", "evil", "compute", "tags"), 10**6,
                   {"tag": "x" * 40 + forged + "y" * 40})], None)
    await write_log(directory, [*batches, tail])
    segment = only_segment(directory)
    buf = segment.read_bytes()
    at = buf.rindex(forged.encode())
    segment.write_bytes(buf[:at + len(forged) + 5])  # the crash cut the record after it
    view, recovery = await reopen(directory)
    assert view.digest() == replay_view(batches).digest()
    assert any("torn tail" in note for note in recovery.notes), recovery.notes


async def _compacted(directory: Path, online: bool) -> View:
    batches = make_batches(40, seed=13)
    live = await write_log(directory, batches, compact_ratio=None, snapshot_every=None)
    if online:
        log = FileLog(directory, fsync="none", compact_ratio=None, snapshot_every=None)
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run, View())
            await log.compact()
            nursery.cancel_scope.cancel()
    else:
        compact_log(directory)
    assert replay_view(batches).digest() == live.digest()
    return live


@pytest.mark.parametrize("online", [False, True])
async def test_every_flipped_byte_of_a_compacted_generation_is_caught(
        tmp_path: Path, online: bool) -> None:
    """Finding 13: the compacted state is one group nothing follows; damage in it is never
    a torn write: verify fails, open refuses without cutting, repair acts."""
    directory = tmp_path / "log"
    live = await _compacted(directory, online)
    segment = only_segment(directory)
    good = segment.read_bytes()
    step = 1 if not online else 3  # both paths write the same bytes; sample the second
    for i in range(0, len(good), step):
        bad = bytearray(good)
        bad[i] ^= 0x04
        segment.write_bytes(bytes(bad))
        before = _digests(directory)
        report = verify_log(directory)
        assert not report.ok, (i, report)
        await _refused(directory)
        assert _digests(directory) == before, i  # refused, and nothing was cut
    segment.write_bytes(good)
    view, _ = await reopen(directory)
    assert view.digest() == live.digest()
    bad = bytearray(good)
    bad[len(good) - 3] ^= 0x01
    segment.write_bytes(bytes(bad))
    assert repair_log(directory).damage is not None


async def _group_log(directory: Path) -> tuple[list[bytes], int, int, bytes]:
    """A log of several acknowledged group commits, then one group of five batches.

    Returns the digests (before the last two groups, before the last, all), where the last
    two groups start, and the segment's bytes.
    """
    batches = make_batches(80, seed=17)
    await write_log(directory, batches)
    segment = only_segment(directory)
    digests = [replay_view(batches).digest()]
    starts = []
    log = FileLog(directory, fsync="none", snapshot_every=None, compact_ratio=None)
    view = View()
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, view)
        for group in range(2):
            starts.append(segment.stat().st_size)
            receipts = [log.append_nowait(
                [Event("g", ("vms", f"g{group}", "compute", str(i)), 10**6 + i, {"i": i}),
                 Event("g", ("vms", "shared", "compute", "n"), 10**6 + 10 * group + i, i)],
                Checkpoint("g", [group, i])) for i in range(5)]
            await receipts[-1].wait()
            assert log.statistics().last_group_size == 5
            digests.append(view.digest())
        nursery.cancel_scope.cancel()
    return digests, starts[0], starts[1], segment.read_bytes()


async def test_every_truncation_inside_a_group_commit_keeps_the_group_whole_or_out(
        tmp_path: Path) -> None:
    directory = tmp_path / "log"
    digests, _, last, good = await _group_log(directory)
    segment = only_segment(directory)
    for n in range(last, len(good) + 1):
        segment.write_bytes(good[:n])
        view, recovery = await reopen(directory)
        expected = digests[2] if n == len(good) else digests[1]
        assert view.digest() == expected, n  # never some batches of the group
        assert segment.stat().st_size == (len(good) if n == len(good) else last), n
        assert bool(recovery.notes) == (n != len(good) and n != last), (n, recovery.notes)


async def test_every_flipped_byte_of_a_group_commit(tmp_path: Path) -> None:
    """In the last group: cut as torn (the whole group, never part of it). In the group
    before it: refused, because a later group proves it was written and fsynced."""
    directory = tmp_path / "log"
    digests, first, last, good = await _group_log(directory)
    segment = only_segment(directory)
    for i in range(first, len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x20
        segment.write_bytes(bytes(bad))
        if i < last:
            await _refused(directory)
            assert segment.read_bytes() == bytes(bad), i
        else:
            view, _ = await reopen(directory)
            assert view.digest() == digests[1], i
            assert segment.stat().st_size == last, i


async def test_damage_to_the_last_group_after_a_clean_stop_is_refused_not_cut(
        tmp_path: Path) -> None:
    """Before: a clean stop left the marker unsealed, so a flipped byte in the last group
    (acknowledged, durable) was cut as a torn write at the next open, losing the batch
    without a word. Now the clean stop seals the log at its end; a crash image (no clean
    stop) still has its last group cut as a torn tail, and the seal does not stop a later
    crash's torn tail from being cut."""
    directory, crashed = tmp_path / "log", tmp_path / "crashed"
    batches = make_batches(40, seed=5)
    log = FileLog(directory)  # fsync="always": only then is anything known durable
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, View())
        for events, cp in batches:
            await log.append(events, cp)
        shutil.copytree(directory, crashed)  # what a kill -9 here leaves
        nursery.cancel_scope.cancel()
    for d in (directory, crashed):
        segment = only_segment(d)
        buf = bytearray(segment.read_bytes())
        buf[-3] ^= 0xFF  # inside the last group's last record
        segment.write_bytes(bytes(buf))
    view, recovery = await reopen(crashed)
    assert view.digest() == replay_view(batches[:-1]).digest()
    assert any("torn tail" in note for note in recovery.notes)
    await _refused(directory)
    repair_log(directory)  # the operator's way out, as for any mid-log corruption
    view, _ = await reopen(directory)
    assert view.digest() == replay_view(batches[:-1]).digest()
    # Reopened and written again, a crash's torn tail after the sealed end is still cut.
    again = tmp_path / "crashed-again"
    log = FileLog(directory)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, View())
        await log.append([Event("s", ("vms", "v", "x"), 10**6, 1)])
        shutil.copytree(directory, again)
        nursery.cancel_scope.cancel()
    segment = only_segment(again)
    segment.write_bytes(segment.read_bytes()[:-3])
    view, recovery = await reopen(again)
    assert view.digest() == replay_view(batches[:-1]).digest()
    assert any("torn tail" in note for note in recovery.notes)
