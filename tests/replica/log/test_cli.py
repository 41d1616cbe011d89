"""The real ``imds-replica log ...`` command, run as a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from imds_replica import Event
from imds_replica._log._frame import FILE_HEADER_SIZE, GROUP_SIZE, RecordType, frame
from imds_replica._log._segment import lock_directory

from ._helpers import (
    Batch,
    append_group,
    make_batches,
    only_segment,
    reopen,
    stored,
    write_log,
)

pytestmark = pytest.mark.integration

_SCRIPT = Path(sys.executable).with_name("imds-replica")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "imds_replica._cli"]


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def _write(directory: Path, batches: list[Batch], **kwargs: object) -> None:
    trio.run(lambda: write_log(directory, batches, **kwargs))


def test_help_lists_the_commands() -> None:
    result = cli("log", "--help")
    assert result.returncode == 0
    for command in ("verify", "dump", "stats", "compact", "repair", "exit status"):
        assert command in result.stdout


def test_verify_valid_torn_and_corrupt(tmp_path: Path) -> None:
    log = tmp_path / "log"
    _write(log, make_batches(300))
    ok = cli("log", "verify", log)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok: 1 segment(s)")
    segment = only_segment(log)
    with open(segment, "ab") as f:
        f.write(b"\x07\x00\x00")  # the first bytes of a record whose write was cut short
    torn = cli("log", "verify", log)
    assert torn.returncode == 0
    assert "torn tail of 3 bytes" in torn.stdout
    raw = bytearray(segment.read_bytes())
    raw[FILE_HEADER_SIZE + GROUP_SIZE + 12] ^= 1  # inside the first group's first record
    segment.write_bytes(bytes(raw))
    bad = cli("log", "verify", log)
    assert bad.returncode == 1
    assert f"({segment.name} at offset {FILE_HEADER_SIZE})" in bad.stderr
    assert "checksum mismatch" in bad.stderr


def test_verify_refuses_what_is_not_a_log(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = cli("log", "verify", tmp_path)
    assert result.returncode == 3
    assert "not an imds-replica log directory" in result.stderr
    assert cli("log", "verify", tmp_path / "nope").returncode == 3


def test_dump_prints_each_stored_event_once(tmp_path: Path) -> None:
    events = [Event("fabric", ("vms", "a", "name"), 1, "one"),
              Event("fabric", ("vms", "a", "name"), 2, None, deleted=True),
              Event("tags", ("vms", "b"), 5, {"z": [1, 2], "a": None}, seq=3)]
    batches: list[Batch] = [(events, None), (events[:1], None)]  # a redelivered duplicate
    _write(tmp_path / "log", batches)
    result = cli("log", "dump", tmp_path / "log")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [
        {"source": "fabric", "key": ["vms", "a", "name"], "version": 1, "value": "one"},
        {"source": "fabric", "key": ["vms", "a", "name"], "version": 2, "deleted": True},
        {"source": "tags", "key": ["vms", "b"], "version": 5, "value": {"a": None, "z": [1, 2]}},
    ]



def test_dump_reports_an_unreadable_payload_as_corruption(tmp_path: Path) -> None:
    _write(tmp_path / "log", make_batches(20))
    segment = only_segment(tmp_path / "log")
    # A whole record (good checksum) that is not msgpack, in a whole group.
    offset = append_group(segment, frame(RecordType.BATCH, b"\xc1")) + GROUP_SIZE
    result = cli("log", "dump", tmp_path / "log")
    assert result.returncode == 1, result.stderr
    assert "unreadable payload" in result.stderr
    assert f"({segment.name} at offset {offset})" in result.stderr
    assert "Traceback" not in result.stderr

def test_stats_and_compact(tmp_path: Path) -> None:
    log = tmp_path / "log"
    batches = make_batches(2000, keys=30)
    _write(log, batches, snapshot_every=None)
    live_before, _ = trio.run(reopen, log)
    stats = json.loads(cli("log", "stats", "--json", log).stdout)
    records, events = stored(batches)
    versions = [e.version for e in events]
    registers = list(live_before.registers())
    assert stats["events"] == len(versions)
    assert stats["records"] == records
    assert stats["segments"] == 1
    assert stats["oldest_version"] == min(versions)
    assert stats["newest_version"] == max(versions)
    assert stats["tombstones"] == sum(e.deleted for e in registers)
    assert stats["live_keys"] == sum(not e.deleted for e in registers)
    assert stats["format_version"] == 2
    assert stats["segment_format_versions"] == [2]
    plain = cli("log", "stats", log)
    assert "live_keys: " in plain.stdout
    assert plain.stdout.startswith("format_version: 2\n")
    result = cli("log", "compact", "--tombstones-before", "1000", log)
    assert result.returncode == 0, result.stderr
    assert f"{stats['bytes']} -> " in result.stdout
    after = json.loads(cli("log", "stats", "--json", log).stdout)
    assert after["bytes"] < stats["bytes"] / 4
    assert after["generation"] == 2
    assert after["live_keys"] == stats["live_keys"]
    assert after["tombstones"] == sum(e.deleted and e.version >= 1000 for e in registers)
    assert after["checkpoints"] == stats["checkpoints"]
    assert cli("log", "verify", log).returncode == 0


def test_repair_moves_damage_aside_and_explains(tmp_path: Path) -> None:
    log = tmp_path / "log"
    _write(log, make_batches(2000), segment_bytes=4096, snapshot_every=None)
    segments = sorted(log.glob("*.seg"))
    middle = segments[len(segments) // 2]
    raw = bytearray(middle.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    middle.write_bytes(bytes(raw))
    assert cli("log", "verify", log).returncode == 1
    result = cli("log", "repair", log)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "damage: mid-log corruption" in out
    assert "moved aside (kept) into" in out
    assert "sources resume from these cursors" in out
    assert "records (" in out
    kept = list((log / "damaged").rglob("*"))
    assert any(p.name.startswith(middle.name + ".from-") for p in kept)
    assert sum(p.name in {s.name for s in segments} for p in kept) == \
        len(segments) - len(segments) // 2 - 1
    assert cli("log", "verify", log).returncode == 0
    view, _ = trio.run(reopen, log)
    assert len(view) > 0
    assert cli("log", "repair", log).stdout.startswith("nothing to repair")


def test_compact_and_repair_refuse_a_log_in_use(tmp_path: Path) -> None:
    _write(tmp_path / "log", make_batches(10))
    fd = lock_directory(tmp_path / "log")
    try:
        for command in ("compact", "repair"):
            result = cli("log", command, tmp_path / "log")
            assert result.returncode == 3
            assert "in use by another process" in result.stderr
    finally:
        os.close(fd)
