"""The collector store's layout: batch files, Parquet parts, compaction staging.

Theory of operation (what makes compaction crash-safe; see ``_compact.py``)::

    STORE/cluster=C/machine=M/date=D/B.jsonl.gz          a batch, as the collector stored it
    STORE/compacting/D~C~G/cluster=C/machine=M/date=D/B.jsonl.gz
    STORE/compacting/D~C~G/date=D/cluster=C/part-P.parquet
                                                         inputs of compaction G of (D, C)
    STORE/compacted/date=D/cluster=C/part-G.parquet      the output of compaction G
    STORE/compacted/date=D/cluster=C/.part-G.tmp         being written (never read)
    STORE/compacted-batches/cluster=C/machine=M/D.txt    batch ids compaction has taken

Every input of compaction G is first *moved* (one rename each) into its staging directory
``compacting/D~C~G``; the one rename of ``.part-G.tmp`` to ``part-G.parquet`` is the commit.
The rule queries follow: a staging directory counts while its ``part-G.parquet`` does not
exist, and not once it does. So at every instant each line is counted exactly once: in its
batch file where the collector put it, in staging, or in the committed part. Queries hold a
shared lock on ``STORE/.compact.lock`` while they list and read; the compactor takes it
exclusively only for its renames, so a query never sees half a move.

The collector answers a retried upload "already stored" when its batch file exists. Once
compaction has moved the file away, only the index ``compacted-batches`` can say so: the
compactor appends the ids it is about to take (fsynced) *before* the first rename, so at
every instant a stored batch is either still at its path or in the index, and a retry
after any compaction is not stored twice. An id in the index is always counted somewhere
(its file, staging or a part), whatever step a crash interrupted, so the index never needs
undoing. It is one small file per machine and day (at most a few hundred ids).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

BATCH_GLOB = "cluster=*/machine=*/date=*/*.jsonl.gz"
COMPACTED = "compacted"
INDEX = "compacted-batches"
STAGING = "compacting"
LOCK = ".compact.lock"
_STAGE_RE = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2})~(?P<cluster>[A-Za-z0-9._-]+)"
                       r"~(?P<gen>\d{20}-[0-9a-f]{8})$")
_PART_RE = re.compile(r"^part-(?P<gen>\d{20}-[0-9a-f]{8})\.parquet$")


@attrs.frozen
class Staged:
    """One compaction's staging directory: its partition and generation."""

    path: Path
    date: str
    cluster: str
    gen: str

    def output(self, store: Path) -> Path:
        return part_path(store, self.date, self.cluster, self.gen)


@attrs.frozen
class Prune:
    """What a query is restricted to: partitions outside are never listed or read.
    ``dates`` is an inclusive range of partition dates (None: open)."""

    clusters: frozenset[str] | None = None
    first_date: dt.date | None = None
    last_date: dt.date | None = None

    def cluster_ok(self, cluster: str) -> bool:
        return self.clusters is None or cluster in self.clusters

    def date_ok(self, date: str) -> bool:
        try:
            day = dt.date.fromisoformat(date)
        except ValueError:
            return False
        return ((self.first_date is None or day >= self.first_date)
                and (self.last_date is None or day <= self.last_date))


@attrs.frozen
class StoreFiles:
    """What one query reads: batch-file globs (each known to match) and Parquet files."""

    batch_globs: tuple[str, ...]
    parquet: tuple[str, ...]


def index_path(store: Path, cluster: str, machine: str, date: str) -> Path:
    return store / INDEX / f"cluster={cluster}" / f"machine={machine}" / f"{date}.txt"


def record_compacted(store: Path, batches: list[Path]) -> None:
    """Add the batch files ``STORE/cluster=C/machine=M/date=D/B.jsonl.gz`` to the index,
    durably (see the module docstring: call before moving any of them)."""
    grouped: dict[Path, list[str]] = {}
    for batch in batches:
        rel = batch.relative_to(store).parts  # cluster=C, machine=M, date=D, B.jsonl.gz
        cluster, machine, date = (part.partition("=")[2] for part in rel[:3])
        grouped.setdefault(index_path(store, cluster, machine, date), []).append(
            rel[3].removesuffix(".jsonl.gz"))
    for path, ids in grouped.items():
        created = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="ascii") as f:
            f.write("".join(f"{i}\n" for i in ids))
            f.flush()
            os.fsync(f.fileno())
        if created:
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def is_compacted(store: Path, cluster: str, machine: str, date: str, batch_id: str) -> bool:
    """Whether compaction has taken batch ``batch_id`` (a torn last line never matches)."""
    try:
        text = index_path(store, cluster, machine, date).read_text(encoding="ascii",
                                                                   errors="replace")
    except FileNotFoundError:
        return False
    return batch_id in text.splitlines()


def part_path(store: Path, date: str, cluster: str, gen: str) -> Path:
    return store / COMPACTED / f"date={date}" / f"cluster={cluster}" / f"part-{gen}.parquet"


def staged(store: Path) -> list[Staged]:
    """Staging directories, oldest generation first (stray names are ignored)."""
    found = []
    try:
        entries = list(os.scandir(store / STAGING))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = _STAGE_RE.match(entry.name)
        if match and entry.is_dir():
            found.append(Staged(Path(entry.path), match["date"], match["cluster"], match["gen"]))
    found.sort(key=lambda s: s.gen)
    return found


def partitions(root: Path, outer: str, inner: str) -> Iterator[tuple[str, str, Path]]:
    """``(outer value, inner value, directory)`` for ``root/outer=*/inner=*``."""
    for first in _keyed(root, outer):
        for second in _keyed(first[1], inner):
            yield first[0], second[0], second[1]


def _keyed(root: Path, key: str) -> list[tuple[str, Path]]:
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    prefix = key + "="
    return sorted((e.name[len(prefix):], Path(e.path)) for e in entries
                  if e.name.startswith(prefix) and e.is_dir())


def parts(directory: Path) -> list[Path]:
    """Committed parts of one ``compacted/date=D/cluster=C`` directory."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(directory / n for n in names if _PART_RE.match(n))


def list_files(store: Path, prune: Prune = Prune()) -> StoreFiles:
    """The files a query over ``store`` reads (call with the shared lock held)."""
    globs: list[str] = []
    parquet: list[str] = []
    for cluster, cluster_dir in _keyed(store, "cluster"):
        if prune.cluster_ok(cluster) and _any_batch(cluster_dir, prune):
            globs.append(str(cluster_dir / "machine=*/date=*/*.jsonl.gz"))
    for date, cluster, directory in partitions(store / COMPACTED, "date", "cluster"):
        if prune.date_ok(date) and prune.cluster_ok(cluster):
            parquet += (str(p) for p in parts(directory))
    for stage in staged(store):
        if not (prune.date_ok(stage.date) and prune.cluster_ok(stage.cluster)):
            continue
        if stage.output(store).exists():
            continue  # committed: its inputs are in the part (and about to be removed)
        if any(stage.path.glob(BATCH_GLOB)):
            globs.append(str(stage.path / BATCH_GLOB))
        parquet += (str(p) for p in sorted(stage.path.glob("date=*/cluster=*/part-*.parquet")))
    return StoreFiles(tuple(globs), tuple(parquet))


def _any_batch(cluster_dir: Path, prune: Prune) -> bool:
    for _, date, directory in partitions(cluster_dir, "machine", "date"):
        if prune.date_ok(date) and any(n.endswith(".jsonl.gz") for n in os.listdir(directory)):
            return True
    return False


@contextmanager
def store_lock(store: Path, *, exclusive: bool) -> Iterator[None]:
    """flock on ``STORE/.compact.lock``: shared for queries, exclusive for the compactor's
    renames. The lock file is created when it can be; a read-only reader of a store whose
    lock file does not exist (never compacted, not writable) reads without it."""
    fd = _open_lock(store / LOCK)
    if fd is None:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def _open_lock(path: Path) -> int | None:
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
        try:
            return os.open(path, flags, 0o644)
        except FileNotFoundError:
            return None  # no store directory: nothing to lock (the caller reports it)
        except PermissionError:
            continue
    return None
