"""Compaction of a collector store into Parquet: same answers, idempotent, crash-safe
(real ``kill -9`` at each stage), late and redelivered batches, pruning, EXPLAIN."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio

from imds_server.telemetry import REPORTS, compact_store, render_access, run_query, store_batch
from imds_server.telemetry._query import Filters, parse_time
from imds_server.telemetry._store import is_compacted, staged

from .conftest import access, run_command

DAY = 86_400
BASE = 1_714_521_600  # 2024-05-01T00:00:00Z
EVERYTHING = Filters()


def put_batch(store: Path, cluster: str, machine: str, when: float, lines: int, *,
              tag: str, batch_hex: str | None = None) -> str:
    """Store one batch of ``lines`` access lines (request ids ``tag-n``) plus one error."""
    rendered = [render_access(access(time=when - 60 + n * 0.5, request_id=f"{tag}-{n}",
                                     caller=f"10.0.{n % 4}.1", status=(200, 200, 404, 503)[n % 4],
                                     api_version=("2021-02-01", "2019-06-04")[n % 2],
                                     route=("/metadata/instance", "/metadata/identity")[n % 2],
                                     seconds=0.0002 * (1 + n % 7)))
                for n in range(lines)]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(when))
    rendered.append(json.dumps({"time": stamp, "level": "error",
                                "logger": "imds_replica", "message": f"fsync failed: EIO {tag}"}))
    batch_id = f"{int(when * 1e9):020d}-{batch_hex or os.urandom(8).hex()}"
    body = gzip.compress(("\n".join(rendered) + "\n").encode())
    assert store_batch(store, cluster, machine, batch_id, body)
    return batch_id


def make_store(store: Path) -> int:
    """3 days x 2 clusters x 2 machines x 3 batches; returns the number of lines."""
    total = 0
    for day in range(3):
        for cluster in ("c1", "c2"):
            for machine in ("m1", "m2"):
                for b in range(3):
                    n = 5 + b
                    put_batch(store, cluster, machine, BASE + day * DAY + 3600 * (b + 1), n,
                              tag=f"{cluster}-{machine}-{day}-{b}")
                    total += n + 1
    return total


def all_reports(store: Path, filters: Filters = EVERYTHING) -> dict[str, list[tuple[object, ...]]]:
    return {name: sorted(run_query([store], [], report=name, regex="fsync .*EIO", limit=100,
                                   filters=filters)[1], key=repr)
            for name in REPORTS}


def count(store: Path, filters: Filters = EVERYTHING) -> tuple[int, int]:
    """(lines, distinct lines): equal when nothing is counted twice."""
    _, rows = run_query([store], [], filters=filters, sql=(
        "SELECT count(*), count(DISTINCT coalesce(request_id, message)) FROM logs"))
    return rows[0]


def batch_files(store: Path) -> list[Path]:
    return sorted(store.glob("cluster=*/machine=*/date=*/*.jsonl.gz"))


def part_files(store: Path) -> list[Path]:
    return sorted(store.glob("compacted/date=*/cluster=*/part-*.parquet"))


def test_compaction_keeps_every_answer_and_lays_out_parquet(tmp_path: Path) -> None:
    import duckdb

    total = make_store(tmp_path)
    before = all_reports(tmp_path)
    scoped = Filters(cluster="c1", since=parse_time("2024-05-02T00:00:00Z", "since"),
                     until=parse_time("2024-05-03T00:00:00Z", "until"))
    before_scoped = all_reports(tmp_path, scoped)
    result = compact_store(tmp_path)
    assert (result.partitions, result.batches, result.lines) == (6, 36, total)
    assert batch_files(tmp_path) == []
    assert [p.relative_to(tmp_path).parent.as_posix() for p in part_files(tmp_path)] == [
        f"compacted/date=2024-05-0{d}/cluster={c}" for d in (1, 2, 3) for c in ("c1", "c2")]
    assert all_reports(tmp_path) == before
    assert all_reports(tmp_path, scoped) == before_scoped
    assert count(tmp_path) == (total, total)
    with duckdb.connect() as con:
        part = f"read_parquet('{part_files(tmp_path)[0]}', hive_partitioning=false)"
        names = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {part}").fetchall()]
        sorted_ok = con.execute(
            f"SELECT bool_and(time >= prev) FROM (SELECT time, lag(time, 1, time) OVER () AS "
            f"prev FROM {part})").fetchone()
    assert {"machine", "batch", "time", "api_version"} <= set(names)
    assert "cluster" not in names  # a partition (path) column, not stored
    assert sorted_ok == (True,)


def test_compaction_is_idempotent(tmp_path: Path) -> None:
    total = make_store(tmp_path)
    compact_store(tmp_path)
    parts = {p: p.stat().st_mtime_ns for p in part_files(tmp_path)}
    again = compact_store(tmp_path)
    assert (again.partitions, again.batches, again.lines, again.recovered) == (0, 0, 0, 0)
    assert {p: p.stat().st_mtime_ns for p in part_files(tmp_path)} == parts
    assert count(tmp_path) == (total, total)


def test_late_and_redelivered_batches(tmp_path: Path) -> None:
    total = make_store(tmp_path)
    first = put_batch(tmp_path, "c1", "m1", BASE + 7200, 4, tag="early", batch_hex="ab" * 8)
    total += 5
    compact_store(tmp_path)
    # Late: a batch for the compacted partition arrives; queries find it at once.
    put_batch(tmp_path, "c1", "m3", BASE + 5000, 6, tag="late")
    total += 7
    assert count(tmp_path) == (total, total)
    _, rows = run_query([tmp_path], [], sql="SELECT machine, count(*) FROM logs WHERE "
                        "request_id LIKE 'late-%' GROUP BY ALL")
    assert rows == [("m3", 6)]
    # Redelivered: an upload retried after its batch was compacted is "already stored"
    # (the index of compacted batches), at once, without waiting for the next compaction.
    body = gzip.compress(b'{"time": "2024-05-01T02:00:00Z", "message": "x"}\n')
    assert not store_batch(tmp_path, "c1", "m1", first, body)
    assert count(tmp_path) == (total, total)
    assert store_batch(tmp_path, "c1", "m2", first, body)  # another machine's is its own
    total += 1
    assert count(tmp_path) == (total, total)


def test_a_batch_stored_twice_all_the_same_is_dropped_by_compaction(tmp_path: Path) -> None:
    """A store from before the index (or one whose index was lost): the redelivered batch
    is stored again, and the next compaction drops it (the batch id is a column)."""
    total = make_store(tmp_path)
    first = put_batch(tmp_path, "c1", "m1", BASE + 7200, 4, tag="early", batch_hex="ab" * 8)
    total += 5
    compact_store(tmp_path)
    shutil.rmtree(tmp_path / "compacted-batches")
    again = put_batch(tmp_path, "c1", "m1", BASE + 7200, 4, tag="early", batch_hex="ab" * 8)
    assert again == first
    assert count(tmp_path) == (total + 5, total)  # counted twice until compaction
    result = compact_store(tmp_path)
    assert (result.partitions, result.batches, result.merged_parts) == (1, 1, 1)
    assert count(tmp_path) == (total, total)
    assert len(list((tmp_path / "compacted/date=2024-05-01/cluster=c1").iterdir())) == 1


def test_batches_are_indexed_before_compaction_moves_them(tmp_path: Path) -> None:
    """The ordering that makes a retry during compaction safe: by the time any batch file
    has left its path, every batch of the partition is in the index."""
    make_store(tmp_path)
    ids = {(p.parts[-4][8:], p.parts[-3][8:], p.parts[-2][5:], p.name[:-9])
           for p in batch_files(tmp_path)}
    seen: list[bool] = []

    def check(stage: str) -> None:
        if stage == "staged":
            seen.append(all(is_compacted(tmp_path, c, m, d, b) for c, m, d, b in ids
                            if not (tmp_path / f"cluster={c}/machine={m}/date={d}/{b}.jsonl.gz"
                                    ).exists()))

    compact_store(tmp_path, on_stage=check)
    assert seen == [True] * 6
    assert all(is_compacted(tmp_path, *key) for key in ids)
    assert not is_compacted(tmp_path, "c1", "m1", "2024-05-01", "0" * 20 + "-" + "ef" * 8)


def test_young_batches_wait_for_min_age(tmp_path: Path) -> None:
    make_store(tmp_path)
    young = batch_files(tmp_path)[0]
    now = young.stat().st_mtime
    for path in batch_files(tmp_path)[1:]:
        os.utime(path, (now - 3600, now - 3600))
    result = compact_store(tmp_path, min_age=600, now=now)
    assert result.batches == 35
    assert batch_files(tmp_path) == [young]


def test_a_partition_that_fails_is_left_as_it_was(tmp_path: Path) -> None:
    total = make_store(tmp_path)
    bad = gzip.compress(b'{"time": "2024-05-02T01:00:00Z", "status": "not a number"}\n')
    assert store_batch(tmp_path, "c2", "m1", f"{(BASE + DAY + 60) * 10**9:020d}-{'cd' * 8}", bad)
    result = compact_store(tmp_path)
    assert result.partitions == 5
    assert len(result.failed) == 1
    assert "date=2024-05-02/cluster=c2" in result.failed[0]
    assert len(batch_files(tmp_path)) == 7  # that partition's 6 + the bad one, untouched
    assert staged(tmp_path) == []
    ok = Filters(cluster="c1")
    assert count(tmp_path, ok) == (total // 2, total // 2)


def test_queries_prune_partitions_before_reading(tmp_path: Path) -> None:
    make_store(tmp_path)
    compact_store(tmp_path)
    # Damage one partition: a query that prunes it never opens it; one that does not fails.
    damaged = next((tmp_path / "compacted/date=2024-05-03/cluster=c2").iterdir())
    damaged.write_bytes(b"not parquet")
    day2_c1 = Filters(cluster="c1", since=parse_time("2024-05-02T00:00:00Z", "since"),
                      until=parse_time("2024-05-02T12:00:00Z", "until"))
    lines, _ = count(tmp_path, day2_c1)
    assert lines == 2 * (6 + 7 + 8)  # two machines, three batches, each with its error line
    # Pruned by DuckDB itself from a free query's partition filter, too.
    _, rows = run_query([tmp_path], [], sql="SELECT count(*) FROM logs WHERE cluster = 'c1'")
    assert rows == [(2 * 3 * (6 + 7 + 8),)]
    with pytest.raises(ValueError, match="query failed"):
        count(tmp_path)


def test_literal_grep_uses_contains_and_regex_still_works(tmp_path: Path) -> None:
    import duckdb

    from imds_server.telemetry._query import logs_view_sql, report_sql

    make_store(tmp_path)
    compact_store(tmp_path)
    put_batch(tmp_path, "c1", "m1", BASE + 600, 3, tag="fresh")  # batches and Parquet
    view = logs_view_sql([tmp_path], [])
    assert view is not None
    with duckdb.connect() as con:
        con.execute(view)
        literal = "\n".join(r[1] for r in con.execute(
            "EXPLAIN " + report_sql("grep", regex="fsync failed")).fetchall())
        pattern = "\n".join(r[1] for r in con.execute(
            "EXPLAIN " + report_sql("grep", regex="fsync .*EIO")).fetchall())
    assert "contains(message, 'fsync failed')" in literal
    assert "regexp_matches" not in literal
    assert "regexp_matches(message, 'fsync .*EIO')" in pattern
    _, rows = run_query([tmp_path], [], report="grep", regex="EIO (c1-m1-0-1|fresh)$")
    assert sorted(r[5] for r in rows) == ["fsync failed: EIO c1-m1-0-1", "fsync failed: EIO fresh"]


_CRASHER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from imds_server.telemetry import compact_store

    target = sys.argv[2]
    def on_stage(name):
        if name == target:
            print(name, flush=True)
            time.sleep(60)
    compact_store(Path(sys.argv[1]), on_stage=on_stage)
    print("finished", flush=True)
""")


@pytest.mark.integration
@pytest.mark.parametrize("stage", ["staged", "written", "committed"])
async def test_kill_9_mid_compaction_never_counts_twice_or_loses(tmp_path: Path,
                                                                 stage: str) -> None:
    store = tmp_path / "store"
    total = make_store(store)
    before = all_reports(store)
    script = tmp_path / "crash.py"
    script.write_text(_CRASHER)
    process = await trio.lowlevel.open_process(
        [sys.executable, str(script), str(store), stage], stdout=subprocess.PIPE)
    assert process.stdout is not None
    with trio.fail_after(60):
        seen = await process.stdout.receive_some(100)
    assert seen.decode().strip() == stage
    process.send_signal(signal.SIGKILL)
    await process.wait()
    await process.stdout.aclose()
    # Killed while holding files in staging (and, at 'committed', with the new part in
    # place but its inputs not yet removed): every line is still counted exactly once.
    assert staged(store)
    assert count(store) == (total, total)
    assert all_reports(store) == before
    result = compact_store(store)
    assert result.recovered == 1
    assert staged(store) == []
    assert count(store) == (total, total)
    assert all_reports(store) == before
    assert batch_files(store) == []
    assert list(store.glob("compacted/*/*/.part-*")) == []


@pytest.mark.integration
async def test_compact_command(tmp_path: Path) -> None:
    total = make_store(tmp_path)
    result = await run_command(["logs", "compact", "--store", str(tmp_path), "--json"],
                               seconds=60)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["batches"], summary["lines"]) == (36, total)
    query = await run_command(["logs", "query", "--store", str(tmp_path), "--cluster", "c2",
                               "--machine", "m1", "--since", "2024-05-03T00:00:00Z",
                               "--sql", "SELECT count(*) AS n FROM logs", "--format", "csv"])
    assert query.returncode == 0, query.stderr
    assert query.stdout.decode().split() == ["n", str(6 + 7 + 8)]
    bad = await run_command(["logs", "query", "--store", str(tmp_path), "--since", "yesterday",
                             "--report", "status"])
    assert bad.returncode == 2
    assert b"bad --since 'yesterday'" in bad.stderr
    missing = await run_command(["logs", "compact", "--store", str(tmp_path / "nope")])
    assert missing.returncode == 2
    assert b"no store directory" in missing.stderr
