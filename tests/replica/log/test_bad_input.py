"""Bad input gives clear errors and never a half-applied batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from imds_replica import CorruptLogError, StorageError, View
from imds_replica._log import FileLog, verify_log
from imds_replica._log._frame import FILE_HEADER_SIZE, crc32c

from ._harness import Zygote, check_log
from ._helpers import make_batches, only_segment, reopen, replay_view, write_log


async def _open(directory: Path) -> None:
    """Open and close; a failure is raised as itself, not inside the nursery's group."""
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(FileLog(directory).run, View())
            nursery.cancel_scope.cancel()
    except ExceptionGroup as group:
        [error] = group.exceptions
        raise error from None


async def test_directory_that_is_not_ours(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StorageError, match="not an imds-replica log directory"):
        await _open(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]  # not even a LOCK file left
    (tmp_path / "imds-log.json").write_text('{"format": "something-else"}')
    with pytest.raises(StorageError, match="not an imds-replica log marker"):
        await _open(tmp_path)


async def test_future_format_version(tmp_path: Path) -> None:
    await write_log(tmp_path / "log", make_batches(20))
    meta = tmp_path / "log" / "imds-log.json"
    doc = json.loads(meta.read_text())
    meta.write_text(json.dumps({**doc, "version": 7}))
    before = {p.name: p.read_bytes() for p in (tmp_path / "log").iterdir() if p.name != "LOCK"}
    with pytest.raises(StorageError, match="format version 7; this build of imds-replica reads "
                                           "versions 1 and 2"):
        await _open(tmp_path / "log")
    # Never truncated or rewritten: a format we do not know is not ours to touch.
    assert {p.name: p.read_bytes() for p in (tmp_path / "log").iterdir()
            if p.name != "LOCK"} == before
    meta.write_text(json.dumps(doc))
    segment = only_segment(tmp_path / "log")
    raw = bytearray(segment.read_bytes())
    raw[8:10] = (9).to_bytes(2, "little")
    raw[12:16] = crc32c(bytes(raw[:12])).to_bytes(4, "little")
    segment.write_bytes(bytes(raw))
    with pytest.raises(StorageError, match=f"segment {segment.name} has log format version 9"):
        await _open(tmp_path / "log")


async def test_mid_log_corruption_names_segment_and_offset(tmp_path: Path) -> None:
    await write_log(tmp_path / "log", make_batches(200))
    segment = only_segment(tmp_path / "log")
    raw = bytearray(segment.read_bytes())
    raw[FILE_HEADER_SIZE + 20] ^= 0x10
    segment.write_bytes(bytes(raw))
    with pytest.raises(CorruptLogError, match=f"{segment.name} at offset {FILE_HEADER_SIZE}") \
            as info:
        await _open(tmp_path / "log")
    assert info.value.segment == segment.name
    assert info.value.offset == FILE_HEADER_SIZE
    assert segment.read_bytes() == bytes(raw)  # refused, and nothing was cut


async def test_truncated_snapshot_is_reported_and_not_used(tmp_path: Path) -> None:
    batches = make_batches(600)
    live = await write_log(tmp_path / "log", batches, snapshot_every=100, compact_ratio=None)
    [snap] = (tmp_path / "log").glob("*.snap")
    snap.write_bytes(snap.read_bytes()[: snap.stat().st_size // 2])
    view, recovery = await reopen(tmp_path / "log", compact_ratio=None)
    assert view.digest() == live.digest() == replay_view(batches).digest()
    assert any(snap.name in n and "truncated" in n and "replaying the log" in n
               for n in recovery.notes), recovery.notes
    report = verify_log(tmp_path / "log")
    assert not report.ok
    assert snap.name in report.problems[0]


async def test_missing_segment_is_corruption(tmp_path: Path) -> None:
    await write_log(tmp_path / "log", make_batches(600), segment_bytes=4096, snapshot_every=None)
    segments = sorted((tmp_path / "log").glob("*.seg"))
    segments[1].unlink()
    with pytest.raises(CorruptLogError, match=f"segment {segments[1].name} is missing"):
        await _open(tmp_path / "log")


@pytest.mark.integration
def test_full_disk_via_file_size_limit(tmp_path: Path) -> None:
    """A writer whose files may not exceed 12 kB: clear error, acknowledged data intact."""
    _until_storage_fails(tmp_path / "log", "fsize", "File too large")


@pytest.mark.integration
def test_full_disk_on_a_small_tmpfs(tmp_path: Path) -> None:
    mount = tmp_path / "mnt"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        _until_storage_fails(mount / "log", "plain", "No space left on device")
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _until_storage_fails(directory: Path, mode: str, reason: str) -> None:
    zygote = Zygote()
    try:
        seen: list[str] = []
        zygote.send(f"spawn {directory} {mode} 1000000 1")
        pid = int(zygote.until("pid ", seen).split()[1])
        failure = zygote.until(("storage-error ", "error"), seen, timeout=60)
        zygote.send(f"wait {pid}")
        zygote.until(f"dead {pid} ", seen)
    finally:
        zygote.close()
    assert failure.startswith("storage-error"), "\n".join([*seen[-20:], failure])
    assert reason in failure, failure
    acked = {int(line.split()[1]) for line in seen if line.startswith("ack ")}
    assert acked, seen[:5]
    assert not [line for line in seen if line.startswith("error")]
    check_log(directory, acked, {0: max(acked)}, set())  # nothing acked lost, nothing half
