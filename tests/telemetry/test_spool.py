from __future__ import annotations

import gzip
import time
from pathlib import Path

import pytest

from imds_server.telemetry import Spool
from imds_server.telemetry._spool import CorruptBatch, batch_date


def add(spool: Spool, n: int, tag: str = "x") -> None:
    spool.add([f'{{"message":"{tag}-{i}"}}' for i in range(n)], cluster="c1", machine="m1")


def test_batches_survive_a_restart_in_order(tmp_path: Path) -> None:
    first = Spool(tmp_path, 1 << 20)
    for tag in "abc":
        add(first, 3, tag)
    again = Spool(tmp_path, 1 << 20)  # a new process over the same directory
    pending = again.pending()
    assert [gzip.decompress(again.read(b)).decode().split("\n")[0] for b in pending] == [
        '{"message":"a-0"}', '{"message":"b-0"}', '{"message":"c-0"}']
    assert {(b.cluster, b.machine, b.lines) for b in pending} == {("c1", "m1", 3)}
    assert batch_date(pending[0].batch_id) == time.strftime("%Y-%m-%d", time.gmtime())


def test_bound_drops_oldest_first_and_counts(tmp_path: Path) -> None:
    dropped = []
    spool = Spool(tmp_path, 1024, on_drop=dropped.append)
    for n in range(40):
        spool.add([f'{{"n":{n},"pad":"{"z" * 40}{n}"}}'] * 5, cluster="c1", machine="m1")
    stats = spool.statistics()
    assert stats.bytes <= 1024
    assert stats.dropped_batches == len(dropped) == 40 - stats.batches
    assert stats.dropped_lines == 5 * stats.dropped_batches
    survivors = [gzip.decompress(spool.read(b)) for b in spool.pending()]
    assert b'"n":39' in survivors[-1]  # the newest is kept
    assert all(b'"n":0,' not in s for s in survivors)


def test_corrupt_and_stray_files_are_set_aside_not_deleted(tmp_path: Path) -> None:
    quarantined: list[str] = []
    spool = Spool(tmp_path, 1 << 20, on_quarantine=quarantined.append)
    add(spool, 3)
    add(spool, 3)
    victim = spool.pending()[0]
    victim.path.write_bytes(victim.path.read_bytes()[:-6])  # torn: CRC/length missing
    (tmp_path / "notes.txt").write_text("?")
    (tmp_path / "half.jsonl.gz.tmp").write_bytes(b"partial")
    pending = spool.pending()
    assert len(pending) == 2
    assert not (tmp_path / "half.jsonl.gz.tmp").exists()
    with pytest.raises(CorruptBatch):
        spool.read(pending[0])
    spool.read(pending[1])
    assert sorted(p.name for p in (tmp_path / "corrupt").iterdir()) == sorted(
        [victim.path.name, "notes.txt"])
    assert quarantined == ["unknown-file", "corrupt"]
    assert len(spool.pending()) == 1


def test_unwritable_spool_raises_for_the_caller_to_count(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    spool = Spool(tmp_path / "file" / "spool", 1 << 20)
    with pytest.raises(OSError):
        add(spool, 1)
