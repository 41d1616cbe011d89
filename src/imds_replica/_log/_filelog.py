"""``FileLog``: the durable ``EventLog`` — segments, group commit, snapshots, compaction.

One appender task owns the files. ``append`` (and ``append_nowait``, which does not wait)
frames its batch in the caller's task and queues it; the appender takes everything queued,
writes it with one ``write`` and one ``fdatasync`` in a worker thread (batches that arrive
meanwhile form the next group), then applies the group to the view in log order and
completes the receipts. Snapshots and compaction run in the same task between groups, so
they see a view that equals the log exactly.

A storage error never takes the log task (or the process) down: reads are the view's and
go on. The batches of the failed write get ``LogUnavailable`` (a 503), and the log refuses
writes until it can write safely again:

* the disk or a quota is full (ENOSPC, EDQUOT, EFBIG): the partial group is cut off at once
  (a truncation needs no space), and the log takes writes again once the file system has
  room (checked every ``retry_seconds``);
* an fsync failed, or any other I/O error: read-only until the process restarts. Linux may
  have dropped the dirty pages, so an fsync is never retried (fsyncgate); a restart
  recovers whatever was durable.

``statistics()`` (``writable``, ``state``, ``error``) and a log line say which.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from .._errors import ConfigError, LogUnavailable, StorageError, ValidationError
from .._event import Event
from .._gc import gc_paused
from .._horizon import STATE_SOURCE, CompactionState, Horizons, as_horizons
from .._logport import (
    CONTACT_PREFIX,
    Checkpoint,
    Receipt,
    Recovery,
    keep_checkpoint,
    split_checkpoints,
)
from .._view import StagedLoad, View, _wins_tie
from ._compact import CompactionResult, compact_directory
from ._frame import (
    DEFAULT_MAX_RECORD_BYTES,
    FILE_HEADER_SIZE,
    FORMAT_VERSION,
    GROUP_SIZE,
    RecordType,
    batch_payload,
    cursor_pair,
    frame,
    pack,
)
from ._replay import Recovered, recover_directory
from ._segment import (
    FsyncError,
    SegmentWriter,
    ensure_ours,
    fsync_dir,
    list_directory,
    lock_directory,
    read_meta,
    snapshot_name,
    storage_error,
    write_meta,
)
from ._snapshot import Counters, encode_snapshot, write_snapshot

logger = logging.getLogger("imds_replica.log")

#: The errors that mean "no room": the log waits for space instead of going read-only.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: Free bytes the file system must have again before a full log takes writes: this much,
#: or twice the write that failed, whichever is more.
MIN_FREE_BYTES = 64 * 1024

_BATCH = int(RecordType.BATCH)  # struct packs a plain int faster than an IntEnum member
_CHECKPOINT = int(RecordType.CHECKPOINT)


@attrs.frozen
class FileLogStatistics:
    generation: int  # bumped by every compaction
    segments: int
    bytes: int  # size of the live generation's segments
    records: int  # records in the live generation
    batches: int
    events: int
    commits: int  # group commits since open
    last_group_size: int  # batches in the latest group commit
    fsyncs: int
    fsync_seconds: float  # total time spent in fdatasync since open
    snapshots: int  # snapshots written since open
    compactions: int  # compactions since open
    failed: bool  # a storage error made the log refuse appends (for now: see ``state``)
    writable: bool = True  # False while the log refuses appends
    state: str = "ok"  # "ok", "full" (until space is back) or "failed" (until a restart)
    error: str | None = None  # why the log refuses appends
    write_failures: int = 0  # failed writes (group commits, snapshots, compactions)


class _Pending(Receipt):
    """One queued batch (or maintenance request): its record and the receipt's state."""

    __slots__ = ("checkpoint", "events", "frame", "noop")

    def __init__(self, data: bytes, events: tuple[Event, ...],
                 checkpoint: Checkpoint | None, noop: bool = False) -> None:
        Receipt.__init__(self)
        self.frame = data  # b"": nothing to write
        self.events = events
        self.checkpoint = checkpoint
        self.noop = noop  # the events are not written (they change nothing)


class FileLog:
    """A durable log in ``directory`` (created if missing). See the module docstring.

    ``fsync="none"`` skips every fsync: fast, and a power loss may lose or tear anything —
    for tests and benchmarks only. ``on_commit(batches_in_group, fsync_seconds)`` is called
    after each group commit. A snapshot is written after every ``snapshot_every`` appended
    events (None: never); when the log has grown past ``compact_ratio`` times the live
    state (and past one segment) that snapshot becomes a compaction instead (None: only on
    request). ``tombstone_horizon()`` gives the ``Horizons`` below which compaction drops
    tombstones that hide nothing (a bare int is the hybrid-clock horizon; None keeps them
    all); see ``_horizon`` for the floors this leaves and the delivery-delay assumption.
    ``append_nowait`` refuses while more than ``max_queued_bytes`` wait to be written.
    """

    def __init__(self, directory: str | os.PathLike[str], *, fsync: str = "always",
                 segment_bytes: int = 64 * 2**20,
                 on_commit: Callable[[int, float], None] | None = None,
                 snapshot_every: int | None = 100_000, compact_ratio: float | None = 8.0,
                 tombstone_horizon: Callable[[], int | Horizons] | None = None,
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                 max_queued_bytes: int = 64 * 2**20, retry_seconds: float = 1.0) -> None:
        if fsync not in ("always", "none"):
            raise ConfigError(f"{fsync!r} is not one of 'always', 'none'", key="fsync")
        if segment_bytes < 4096:
            raise ConfigError("must be at least 4096", key="segment_bytes")
        if max_queued_bytes < 1:
            raise ConfigError("must be positive", key="max_queued_bytes")
        if snapshot_every is not None and snapshot_every < 1:
            raise ConfigError("must be positive or None", key="snapshot_every")
        self.directory = Path(directory)
        self._fsync = fsync == "always"
        self._segment_bytes = segment_bytes
        self._on_commit = on_commit
        self._snapshot_every = snapshot_every
        self._compact_ratio = compact_ratio
        self._horizon = tombstone_horizon
        self._max_record = max_record_bytes
        self._max_queued = max_queued_bytes
        self._queued_bytes = 0  # framed bytes in ``_queue``: what append_nowait bounds
        self._view: View | None = None
        self._registers_get: Callable[[Any], Event | None] = lambda key: None
        self._writer: SegmentWriter | None = None
        self._queue: list[_Pending] = []
        self._inflight: list[_Pending] = []  # taken from the queue, not yet answered
        self._requests: list[tuple[str, _Pending]] = []
        self._wake = trio.Event()
        #: Set while the log refuses appends (``_storage_failed``); None when writable.
        self._failure: LogUnavailable | None = None
        self._retry = retry_seconds
        self._need_free = MIN_FREE_BYTES
        self._write_failures = 0
        self._closed = False
        self._checkpoints: dict[str, Any] = {}
        self._state = CompactionState()  # as recovered; the view keeps it from then on
        self._generation = 0
        self._first_segment = 1
        self._bytes = 0
        self._counters = Counters()
        self._live_bytes = 0  # size of the last snapshot or compaction output
        self._since_snapshot = 0
        self._commits = self._fsyncs = self._snapshots = self._compactions = 0
        self._last_group = 0
        self._fsync_seconds = 0.0

    # -- the port --------------------------------------------------------------------------
    async def run(self, view: View, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self._view is not None or self._closed:
            raise RuntimeError("FileLog.run may be called once per instance")
        started = time.perf_counter()
        lock_fd = -1
        try:
            # One pause (see gc_paused: a bulk load of long-lived objects) from the scan to
            # the loaded view, and what it built is frozen on the way out: the collector
            # never rescans the recovered registers (a young collection over 1,000,000 of
            # them took a second at the first allocation after the pause).
            with gc_paused(freeze=True):
                lock_fd, rec, staged = await trio.to_thread.run_sync(self._open_sync, view)
                # The winners go in as stored tuples (no Event is built: see
                # View.load_stored); the per-document pass (about a second at 1,000,000
                # keys) ran in the worker thread, so the loop only installs its result.
                view.load_staged(staged)
                # After the registers (held, so the floors do not apply to them); change
                # numbers go on above any the last run can have reached.
                view.restore(self._state)
                view.resume_changes(self._state.change_seq + rec.reducer.events)
            self._view = view
            self._registers_get = view.get
            cursors, contacts = split_checkpoints(rec.reducer.checkpoints)
            task_status.started(Recovery(cursors, rec.reducer.batches,
                                         rec.reducer.events, time.perf_counter() - started,
                                         rec.notes, contacts))
            await self._serve()
        finally:
            self._closed = True
            self._fail_waiters(self._failure or StorageError(
                "the log was closed before this batch was written"))
            if self._writer is not None:
                self._seal()
                self._writer.close()
            if lock_fd >= 0:
                os.close(lock_fd)

    def _seal(self) -> None:
        """A clean stop: everything written is durable (every group was fdatasync'd, and no
        write is in flight: a worker thread's write is waited for), so the marker's
        ``sealed`` moves to the end of the log. Damage found there at the next open is then
        refused as corruption (``imds-replica log repair`` salvages it) instead of being cut
        as a torn write: after a clean stop nothing can be torn, and cutting would drop
        acknowledged batches without a word. Not without fsync (nothing is known durable)
        nor after a storage error; a failure here only leaves the marker as it was."""
        writer = self._writer
        if writer is None or not self._fsync or self._failure is not None \
                or self._view is None:
            return
        try:
            meta = read_meta(self.directory)
            end = (writer.seq, writer.offset)
            if meta.generation == self._generation and meta.sealed < end:
                write_meta(self.directory, attrs.evolve(meta, sealed=end), fsync=True)
        except (OSError, StorageError) as exc:
            logger.warning("could not seal the log in %s at its clean stop: %s",
                           self.directory, exc)

    async def append(self, events: Sequence[Event],
                     checkpoint: Checkpoint | None = None) -> tuple[bool, ...]:
        """Durable and applied on return; one flag per event: did it change the view."""
        return await self._enqueue(events, checkpoint).wait()

    def append_nowait(self, events: Sequence[Event],
                      checkpoint: Checkpoint | None = None) -> Receipt:
        """Queue a batch without waiting; the receipt is done once durable and applied.

        Raises ``trio.WouldBlock`` (queueing nothing) while batches not yet written hold
        more than ``max_queued_bytes``: wait on an earlier receipt, then try again.
        """
        if self._queued_bytes > self._max_queued:
            raise trio.WouldBlock(f"{self._queued_bytes} bytes of batches are queued, more "
                                  f"than max_queued_bytes={self._max_queued}")
        return self._enqueue(events, checkpoint)

    def _enqueue(self, events: Sequence[Event], checkpoint: Checkpoint | None) -> _Pending:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise StorageError("the log is closed")
        if self._view is None:
            raise RuntimeError("FileLog.append before run() recovered")
        batch = tuple(events)
        if self._changes_nothing(batch):
            # A re-sent (or empty) batch: every event loses to a register the view already
            # holds, and the view only moves forward, so writing it would change nothing.
            # Only a new cursor is written, as a small CHECKPOINT record.
            data = b""
            known = self._checkpoints
            if checkpoint is not None and (
                    checkpoint.source not in known
                    or known[checkpoint.source] != checkpoint.cursor
                    or (checkpoint.contact is not None
                        and known.get(CONTACT_PREFIX + checkpoint.source)
                        != checkpoint.contact)):
                data = frame(_CHECKPOINT, pack(cursor_pair(checkpoint)))
            pending = _Pending(data, batch, checkpoint, noop=True)
            if not data and not self._queue and not self._inflight and not self._requests:
                pending._finish((False,) * len(batch))  # nothing ahead of it to wait for
                return pending
            self._queue.append(pending)
            self._queued_bytes += len(data)
            self._wake.set()
            return pending
        data = frame(_BATCH, batch_payload(batch, checkpoint))
        if len(data) > self._max_record:
            raise ValidationError(f"batch: {len(data)} bytes encoded, at most "
                                  f"{self._max_record} per batch")
        pending = _Pending(data, batch, checkpoint)
        self._queue.append(pending)
        self._queued_bytes += len(data)
        self._wake.set()
        return pending

    def _changes_nothing(self, batch: tuple[Event, ...]) -> bool:
        """Every event loses the merge against the view's current register (the test of
        ``View.apply_batch``, its tie rule included: the same write delivered again with a
        smaller seq, or none, wins and must be written, or the register kept would depend
        on arrival order; stops at the first event that may win, usually the first)."""
        get = self._registers_get
        for event in batch:
            old = get(event.key)
            if old is None:
                return False
            version, old_version = event.version, old.version
            if version > old_version or (version == old_version and _wins_tie(event, old)):
                return False
        return True

    def statistics(self) -> FileLogStatistics:
        writer = self._writer
        segments = 0 if writer is None else writer.seq - self._first_segment + 1
        return FileLogStatistics(
            self._generation, segments, self._bytes, self._counters.records,
            self._counters.batches, self._counters.events, self._commits, self._last_group,
            self._fsyncs, self._fsync_seconds, self._snapshots, self._compactions,
            self._failure is not None, self._failure is None,
            "ok" if self._failure is None else self._failure.reason,
            None if self._failure is None else self._failure.message, self._write_failures)

    # -- maintenance on request ------------------------------------------------------------
    async def snapshot(self) -> None:
        """Write a snapshot now (between two group commits) and return when durable."""
        await self._request("snapshot")

    async def compact(self) -> CompactionResult:
        """Rewrite the log as its winners now; appends wait meanwhile."""
        result: CompactionResult = await self._request("compact")
        return result

    async def _request(self, what: str) -> Any:
        if self._failure is not None:
            raise self._failure
        if self._view is None or self._closed:
            raise RuntimeError(f"FileLog.{what} needs a running log")
        pending = _Pending(b"", (), None)
        self._requests.append((what, pending))
        self._wake.set()
        result: Any = await pending.wait()
        return result

    # -- the appender ----------------------------------------------------------------------
    def _open_sync(self, view: View) -> tuple[int, Recovered, StagedLoad]:
        """Lock, recover, and stage the winners for ``view`` (``View.stage_stored``: the
        view is not read or written by anyone while the log recovers it)."""
        try:
            ensure_ours(self.directory)  # before creating a LOCK file in someone else's dir
            self.directory.mkdir(parents=True, exist_ok=True)
            lock_fd = lock_directory(self.directory)
        except OSError as exc:
            raise storage_error(f"opening {self.directory}", exc)
        try:
            rec = recover_directory(self.directory, writable=True, fsync=self._fsync,
                                    max_record=self._max_record)
            staged = view.stage_stored(rec.reducer.take_winners(), lazy=True)
            self._writer = SegmentWriter(self.directory, rec.generation, rec.last_segment,
                                         salt=rec.meta.salt, fsync=self._fsync)
            if rec.last_version != FORMAT_VERSION:  # never append format 2 to a v1 file
                self._writer.rotate()
                rec = attrs.evolve(rec, bytes=rec.bytes + FILE_HEADER_SIZE,
                                   segments=[*rec.segments, self._writer.seq])
        except BaseException:
            os.close(lock_fd)
            raise
        self._generation = rec.generation
        self._first_segment = rec.segments[0]
        self._bytes = rec.bytes
        self._counters = rec.reducer.counters
        self._checkpoints = dict(rec.reducer.checkpoints)
        state = self._checkpoints.pop(STATE_SOURCE, None)
        if state is not None:
            self._state = CompactionState.from_json(state)
            del rec.reducer.checkpoints[STATE_SOURCE]
        return lock_fd, rec, staged

    async def _serve(self) -> None:
        while True:
            if self._failure is not None:
                if self._failure.reason == "full":
                    await trio.sleep(self._retry)
                    await trio.to_thread.run_sync(self._check_space)
                else:  # read-only until a restart: nothing left to do here
                    await trio.sleep_forever()
                continue
            while not self._queue and not self._requests:
                self._wake = trio.Event()
                await self._wake.wait()
            requests, self._requests = self._requests, []
            self._inflight = [p for _, p in requests]
            for what, request in requests:
                try:
                    result = await self._maintain(what)
                except LogUnavailable as exc:
                    request._finish(error=exc)
                else:
                    request._finish(result)
            if self._queue and self._failure is None:
                self._inflight, self._queue = self._queue, []
                self._queued_bytes = 0
                await self._commit(self._inflight)
            self._inflight = []

    def _storage_failed(self, exc: OSError, what: str, size: int = 0) -> LogUnavailable:
        """Stop taking writes after ``exc``; fail whatever is queued; return the error."""
        self._write_failures += 1
        reason = "full" if exc.errno in NO_SPACE and not isinstance(exc, FsyncError) \
            else "failed"
        if reason == "full" and self._writer is not None:
            try:  # cut the partial group off now: a truncation needs no space
                self._writer.truncate()
            except OSError as cut:
                exc, reason = cut, "failed"
        cause = exc.strerror or str(exc)
        if reason == "full":
            self._need_free = max(MIN_FREE_BYTES, 2 * size)
            message = (f"the log in {self.directory} cannot write ({what}: {cause}); it "
                       f"refuses writes until the file system has space again (reads are "
                       f"served)")
            logger.error("%s", message)
        else:
            message = (f"the log in {self.directory} failed ({what}: {cause}); it is "
                       f"read-only until the process restarts (reads are served; an "
                       f"fsync is never retried)")
            logger.critical("%s", message)
        self._failure = LogUnavailable(message, reason=reason,
                                       retry_after=max(1, round(self._retry)) * 5)
        queued, self._queue = self._queue, []
        self._queued_bytes = 0
        for p in queued:
            p._finish(error=self._failure)
        return self._failure

    def _free_bytes(self) -> int:
        st = os.statvfs(self.directory)
        return st.f_bavail * st.f_frsize

    def _check_space(self) -> None:
        """A full log takes writes again once the file system has room."""
        try:
            free = self._free_bytes()
        except OSError:
            return
        if free >= self._need_free:
            logger.warning("the log in %s takes writes again (%d bytes free)",
                           self.directory, free)
            self._failure = None

    async def _commit(self, group: list[_Pending]) -> None:
        frames = [p.frame for p in group if p.frame]
        if not frames:  # only batches that change nothing (see ``_enqueue``): no write
            for p in group:
                p._finish((False,) * len(p.events))
            return
        data = b"".join(frames)
        try:
            seconds = await trio.to_thread.run_sync(self._write_sync, data, len(frames))
        except OSError as exc:
            # Not durable, not applied: this group's batches fail (and what is queued).
            error = self._storage_failed(exc, "writing a group commit", len(data))
            for p in group:
                p._finish(error=error)
            return
        # Durable: apply in log order. Nothing below awaits, so no other group can
        # interleave and the view stays equal to a replay of the log.
        assert self._view is not None
        # One ``apply_batch`` for the whole group (its set-up is per call, and groups of
        # one-event batches are common), then each waiter gets its batch's slice. A batch
        # that was not written (it changed nothing) is not applied either: the view stays
        # exactly a replay of the log.
        flags = self._view.apply_batch([e for p in group if not p.noop for e in p.events])
        checkpoints = self._checkpoints
        events = batches = 0
        for p in group:
            if p.checkpoint is not None:
                keep_checkpoint(checkpoints, p.checkpoint)
            if p.noop:
                p._finish((False,) * len(p.events))
                continue
            n = len(p.events)
            p._finish_slice(flags, events, events + n)
            events += n
            batches += 1
        c = self._counters
        self._counters = Counters(c.records + len(frames), c.batches + batches,
                                  c.events + events)
        self._commits += 1
        self._last_group = len(group)
        self._since_snapshot += events
        if self._fsync:
            self._fsyncs += 1
            self._fsync_seconds += seconds
        if self._on_commit is not None:
            self._on_commit(len(group), seconds)
        if self._snapshot_every is not None and self._since_snapshot >= self._snapshot_every:
            with contextlib.suppress(LogUnavailable):  # the group is durable all the same
                await self._maintain("auto")

    def _write_sync(self, records: bytes, count: int) -> float:
        """Write ``count`` framed records as one group, durably (rotating first if due)."""
        writer = self._writer
        assert writer is not None
        if writer.offset > FILE_HEADER_SIZE and \
                writer.offset + GROUP_SIZE + len(records) > self._segment_bytes:
            writer.rotate()
            self._bytes += FILE_HEADER_SIZE
        data = writer.group(records, count)
        seconds = writer.write(data)
        self._bytes += len(data)
        return seconds

    async def _maintain(self, what: str) -> CompactionResult | None:
        if what == "auto":
            # Compact once the log outgrows the live state (the size of the last snapshot
            # or compaction output, so never before the first one) by ``compact_ratio``.
            ratio = self._compact_ratio
            grown = ratio is not None and self._live_bytes > 0 and (
                self._bytes > max(self._segment_bytes, self._live_bytes * ratio))
            what = "compact" if grown else "snapshot"
        self._since_snapshot = 0
        if self._failure is not None:
            raise self._failure
        try:
            if what == "snapshot":
                await self._snapshot()
                return None
            return await self._compact()
        except OSError as exc:
            raise self._storage_failed(exc, f"writing a {what}") from exc

    async def _snapshot(self) -> None:
        writer, view = self._writer, self._view
        assert writer is not None
        assert view is not None
        events = list(view.registers())
        checkpoints = {**self._checkpoints, STATE_SOURCE: view.compaction_state().to_json()}
        generation, seq, offset, counters = self._generation, writer.seq, writer.offset, \
            self._counters

        def write() -> int:
            data = encode_snapshot(generation, seq, offset, counters, events, checkpoints)
            name = snapshot_name(generation, seq, offset)
            try:
                write_snapshot(self.directory / name, data, fsync=self._fsync)
            except OSError:
                with contextlib.suppress(OSError):  # a snapshot is optional: drop it
                    os.unlink(self.directory / f"{name}.tmp")
                raise
            for old in os.listdir(self.directory):  # the newest snapshot is all we need
                if old.endswith(".snap") and old != name:
                    os.unlink(self.directory / old)
            if self._fsync:
                fsync_dir(self.directory)
            self._write_sync(frame(RecordType.SNAPSHOT, pack([name])), 1)
            return len(data)

        self._live_bytes = await trio.to_thread.run_sync(write)
        c = self._counters
        self._counters = Counters(c.records + 1, c.batches, c.events)
        self._snapshots += 1

    async def _compact(self) -> CompactionResult:
        writer, view = self._writer, self._view
        assert writer is not None
        assert view is not None
        # Forget in the view too, so the view keeps equalling a replay of the new log.
        horizons = None if self._horizon is None else as_horizons(self._horizon())
        dropped = 0 if horizons is None else view.compact(horizons)
        events = list(view.registers())
        checkpoints = {**self._checkpoints, STATE_SOURCE: view.compaction_state().to_json()}

        def rewrite() -> CompactionResult:
            writer.close()
            try:
                result, written = compact_directory(
                    self.directory, self._generation, self._bytes, events, checkpoints,
                    dropped, segment_bytes=self._segment_bytes, fsync=self._fsync)
            except OSError as exc:
                self._compaction_failed(writer, exc)
                raise
            self._writer = SegmentWriter(self.directory, result.generation, written.segments,
                                         salt=written.salt, fsync=self._fsync)
            self._generation, self._first_segment = result.generation, 1
            self._bytes, self._counters = written.bytes, written.counters
            self._live_bytes = written.bytes
            return result

        result = await trio.to_thread.run_sync(rewrite)
        self._compactions += 1
        return result

    def _compaction_failed(self, writer: SegmentWriter, exc: OSError) -> None:
        """Back to the old generation if the switch did not happen (its half-written
        successor removed); past the switch the log is the new one: read-only until a
        restart opens it."""
        try:
            switched = read_meta(self.directory).generation != self._generation
            if not switched:
                for name in list_directory(self.directory, self._generation).leftovers:
                    with contextlib.suppress(OSError):
                        os.unlink(self.directory / name)
                self._writer = SegmentWriter(self.directory, self._generation, writer.seq,
                                             salt=writer.salt, fsync=self._fsync)
        except (OSError, StorageError):
            switched = True
        if switched:
            self._writer = None
            raise FsyncError(exc.errno or errno.EIO,
                             f"compaction failed after the switch: {exc.strerror or exc}")

    def _fail_waiters(self, error: StorageError) -> None:
        waiting = self._inflight + self._queue + [p for _, p in self._requests]
        self._inflight, self._queue, self._requests = [], [], []
        self._queued_bytes = 0
        for p in waiting:
            p._finish(error=error)
