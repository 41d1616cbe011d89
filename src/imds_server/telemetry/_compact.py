"""Compaction of the collector store: a partition's batch files become one Parquet part.

``compact_store(store)`` (``imds-server logs compact --store DIR``; ``imds-server collect``
runs it every ``--compact-every`` seconds) groups the batch files old enough
(``min_age``, so an upload retried after a lost answer still finds its batch and answers
200) by partition ``(date, cluster)`` and, per partition: moves them and the partition's
small parts into a staging directory, has DuckDB write them as one Parquet file sorted by
time (machine and batch id as columns), fsyncs it and renames it into
``compacted/date=D/cluster=C/`` (the commit), then removes the staging directory. The
layout and the counting rule are in ``_store.py``; a crash anywhere leaves each line
counted once, and the next run finishes or undoes what it finds (``recover``).

Sizes follow DuckDB's performance guide: row groups of 100K-1M rows (``ROW_GROUP_SIZE``)
and files of 100 MB-10 GB. A part under ``MERGE_BELOW`` is rewritten with the next
compaction of its partition (late batches join it); larger parts are left alone, so a
busy partition grows by parts of at least that size rather than rewriting a day's data.
The collector refuses an upload retried after its batch was compacted (the index of
compacted batch ids, ``_store``); a batch in a part that is stored again all the same
(a store written before that index existed) is dropped here: the batch id is a column.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from ._query import COLUMNS, columns_sql, quote
from ._store import (
    COMPACTED,
    STAGING,
    Staged,
    part_path,
    partitions,
    parts,
    record_compacted,
    staged,
    store_lock,
)

ROW_GROUP_SIZE = 250_000
MERGE_BELOW = 100 * 1024 * 1024
COMPACTOR_LOCK = ".compactor.lock"
_BATCH_ID_SQL = r"regexp_extract(filename, '(\d{20}-[0-9a-f]{16})\.jsonl\.gz$', 1)"


class CompactionBusy(RuntimeError):
    """Another compaction of this store is running."""


@attrs.frozen
class CompactionResult:
    partitions: int = 0
    batches: int = 0
    lines: int = 0
    merged_parts: int = 0
    bytes_written: int = 0
    recovered: int = 0
    failed: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return attrs.asdict(self)


def compact_store(store: Path, *, min_age: float = 0.0, now: float | None = None,
                  on_stage: Callable[[str], None] | None = None) -> CompactionResult:
    """Compact every partition with batch files older than ``min_age`` seconds.

    ``on_stage(name)`` is called at ``staged``, ``written`` and ``committed`` (tests kill
    the process there). Raises ``CompactionBusy`` if another compaction holds the store.
    """
    store.mkdir(parents=True, exist_ok=True)
    fd = os.open(store / COMPACTOR_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CompactionBusy(f"another compaction is running on {store}") from None
        return _compact_locked(store, min_age, time.time() if now is None else now,
                               on_stage or (lambda _: None))
    finally:
        os.close(fd)


def _compact_locked(store: Path, min_age: float, now: float,
                    on_stage: Callable[[str], None]) -> CompactionResult:
    recovered = recover(store)
    result = CompactionResult(recovered=recovered)
    failed: list[str] = []
    for (date, cluster), files in sorted(_eligible(store, now - min_age).items()):
        try:
            lines, merged, size = _compact_partition(store, date, cluster, files, on_stage)
        except Exception as error:  # reported; the partition stays as it was
            recover(store)
            failed.append(f"date={date}/cluster={cluster}: {error}")
            continue
        result = attrs.evolve(result, partitions=result.partitions + 1,
                              batches=result.batches + len(files), lines=result.lines + lines,
                              merged_parts=result.merged_parts + merged,
                              bytes_written=result.bytes_written + size)
    return attrs.evolve(result, failed=tuple(failed))


def _eligible(store: Path, cutoff: float) -> dict[tuple[str, str], list[Path]]:
    found: dict[tuple[str, str], list[Path]] = {}
    for cluster, _, machine_dir in partitions(store, "cluster", "machine"):
        for entry in _scan(machine_dir):
            if not entry.name.startswith("date=") or not entry.is_dir():
                continue
            date = entry.name[len("date="):]
            for batch in _scan(Path(entry.path)):
                if (batch.name.endswith(".jsonl.gz") and not batch.name.startswith(".")
                        and batch.stat().st_mtime <= cutoff):
                    found.setdefault((date, cluster), []).append(Path(batch.path))
    return found


def _scan(directory: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(directory))
    except FileNotFoundError:
        return []


def _compact_partition(store: Path, date: str, cluster: str, files: list[Path],
                       on_stage: Callable[[str], None]) -> tuple[int, int, int]:
    """(lines written, parts merged, bytes of the new part)."""
    import duckdb

    gen = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
    stage = store / STAGING / f"{date}~{cluster}~{gen}"
    out = part_path(store, date, cluster, gen)
    existing = parts(out.parent)
    merge = [p for p in existing if p.stat().st_size < MERGE_BELOW]
    record_compacted(store, files)  # before they move: a retried upload is still "stored"
    with store_lock(store, exclusive=True):
        touched = {stage}
        for source in files:
            target = stage / source.relative_to(store)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(source, target)
            touched |= {source.parent, target.parent}
        for part in merge:
            target = stage / part.relative_to(store / COMPACTED)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(part, target)
            touched |= {part.parent, target.parent}
        for directory in touched:
            _fsync_dir(directory)
    on_stage("staged")
    staged_parts = [stage / p.relative_to(store / COMPACTED) for p in merge]
    known = staged_parts + [p for p in existing if p not in merge]
    select = ", ".join(COLUMNS)
    sources = [
        f"SELECT {select}, machine, {_BATCH_ID_SQL} AS batch FROM read_json("
        f"{quote(str(stage / 'cluster=*/machine=*/date=*/*.jsonl.gz'))}, "
        f"format='newline_delimited', columns={columns_sql()}, filename=true, "
        "hive_partitioning=true, hive_types={'cluster': 'VARCHAR', 'machine': 'VARCHAR', "
        "'date': 'VARCHAR'})"
        + (f" WHERE {_BATCH_ID_SQL} NOT IN (SELECT batch FROM read_parquet({_list(known)}))"
           if known else "")]
    if staged_parts:
        sources.append(f"SELECT {select}, machine, batch FROM read_parquet({_list(staged_parts)})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".part-{gen}.tmp"
    with duckdb.connect() as con:
        con.execute("SET enable_progress_bar = false")  # output stays the answer
        rows = con.execute(
            f"COPY (SELECT * FROM ({' UNION ALL '.join(sources)}) ORDER BY time, machine) "
            f"TO {quote(str(tmp))} (FORMAT parquet, COMPRESSION zstd, "
            f"ROW_GROUP_SIZE {ROW_GROUP_SIZE})").fetchone()
    on_stage("written")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    size = tmp.stat().st_size
    with store_lock(store, exclusive=True):
        os.rename(tmp, out)  # the commit: from here the staging directory no longer counts
        _fsync_dir(out.parent)
        on_stage("committed")
        shutil.rmtree(stage)
    _remove_empty(files)
    return (int(rows[0]) if rows else 0), len(merge), size


def recover(store: Path) -> int:
    """Finish or undo what a crashed compaction left; returns staging directories handled.

    Committed (its part exists): the staging directory is removed. Not committed: its
    files go back where they came from (a batch stored again meanwhile is kept once).
    Half-written parts (``.part-*.tmp``) are removed.
    """
    handled = 0
    for stage in staged(store):
        with store_lock(store, exclusive=True):
            if not stage.output(store).exists():
                _put_back(store, stage)
            shutil.rmtree(stage.path)
        handled += 1
    for _, _, directory in partitions(store / COMPACTED, "date", "cluster"):
        for tmp in directory.glob(".part-*.tmp"):
            tmp.unlink(missing_ok=True)
    return handled


def _put_back(store: Path, stage: Staged) -> None:
    for path in sorted(stage.path.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(stage.path)
        target = (store / COMPACTED / rel) if rel.parts[0].startswith("date=") else store / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            continue  # the same batch stored again meanwhile: keep one
        os.rename(path, target)
        _fsync_dir(target.parent)


def _remove_empty(files: list[Path]) -> None:
    """Empty ``date=`` directories of past days go (listing stays cheap); today's and
    yesterday's stay, where the collector is likely storing right now."""
    recent = {time.strftime("%Y-%m-%d", time.gmtime(time.time() - d)) for d in (0, 86400)}
    for directory in {f.parent for f in files}:
        if directory.name[len("date="):] in recent:
            continue
        try:
            directory.rmdir()  # only when empty
        except OSError:
            pass


def _list(paths: list[Path]) -> str:
    return "[" + ", ".join(quote(str(p)) for p in paths) + "]"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def compact_main(args: argparse.Namespace) -> int:
    store = Path(args.store)
    if not store.is_dir():
        print(f"logs compact: no store directory {store}", file=sys.stderr)
        return 2
    try:
        result = compact_store(store, min_age=args.min_age)
    except CompactionBusy as error:
        print(f"logs compact: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(f"compacted {result.batches} batch files ({result.lines} lines) into "
              f"{result.partitions} parts, merged {result.merged_parts} older parts, wrote "
              f"{result.bytes_written} bytes; recovered {result.recovered} interrupted "
              "compactions")
    for failure in result.failed:
        print(f"logs compact: failed, left as it was: {failure}", file=sys.stderr)
    return 1 if result.failed else 0
