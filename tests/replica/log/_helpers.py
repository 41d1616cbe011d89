"""Shared helpers for the log tests: deterministic batches, writing and reopening logs."""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from imds_replica import Checkpoint, Event, Recovery, View
from imds_replica._log import FileLog
from imds_replica._log._frame import group_header
from imds_replica._log._segment import read_meta
from imds_replica._merge import supersedes

from .._helpers import view_of

Batch = tuple[list[Event], Checkpoint | None]


def make_batches(n_events: int, *, seed: int = 0, keys: int = 50) -> list[Batch]:
    """Batches of 1..7 events over ``keys`` keys: values, tombstones, version ties."""
    rng = random.Random(seed)
    batches: list[Batch] = []
    made = 0
    while made < n_events:
        size = rng.randint(1, 7)
        events = []
        for _ in range(size):
            key = ("vms", f"vm{rng.randrange(keys)}", "compute", rng.choice(["name", "tags"]))
            version = rng.randrange(max(made, 1))
            source = rng.choice(["fabric", "tags"])
            if rng.random() < 0.15:
                events.append(Event(source, key, version, None, deleted=True))
            else:
                events.append(Event(source, key, version, {"n": made, "s": "x" * rng.randrange(8)}))
            made += 1
        cp = Checkpoint(rng.choice(["fabric", "tags"]), {"pos": made}) \
            if rng.random() < 0.5 else None
        batches.append((events, cp))
    return batches


async def write_log(directory: Path, batches: Sequence[Batch], **kwargs: Any) -> View:
    """Append ``batches`` one by one to a FileLog in ``directory``; return the live view."""
    kwargs.setdefault("fsync", "none")
    view = View()
    log = FileLog(directory, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, view)
        for events, cp in batches:
            await log.append(events, cp)
        nursery.cancel_scope.cancel()
    return view


async def reopen(directory: Path, **kwargs: Any) -> tuple[View, Recovery]:
    """Recover ``directory`` into a fresh view, as after a restart."""
    kwargs.setdefault("fsync", "none")
    view = View()
    async with trio.open_nursery() as nursery:
        recovery: Recovery = await nursery.start(FileLog(directory, **kwargs).run, view)
        nursery.cancel_scope.cancel()
    return view, recovery


def stored(batches: Sequence[Batch]) -> tuple[int, list[Event]]:
    """What a FileLog writes for ``batches`` appended one by one: (records, stored events)."""
    records = stored_records(batches)
    return len(records), [e for r in records for e in r]


def stored_records(batches: Sequence[Batch]) -> list[list[Event]]:
    """The events of each record a FileLog writes for ``batches`` appended one by one.

    A batch whose every event loses to the view is not written; its new cursor, if any,
    is a checkpoint record of its own (no events).
    """
    view = View()
    cursors: dict[str, Any] = {}
    records: list[list[Event]] = []
    for batch, cp in batches:
        if all(not _wins(view, e) for e in batch):
            if cp is not None and cursors.get(cp.source, _NONE) != cp.cursor:
                records.append([])
        else:
            view.apply_batch(batch)
            records.append(list(batch))
        if cp is not None:
            cursors[cp.source] = cp.cursor
    return records


_NONE = object()


def _wins(view: View, e: Event) -> bool:
    return supersedes(e, view.get(e.key))


def replay_view(batches: Sequence[Batch]) -> View:
    """The view of applying every event of ``batches`` in order (no log involved)."""
    return view_of(*(event for events, _ in batches for event in events))


def only_segment(directory: Path) -> Path:
    segments = sorted(directory.glob("*.seg"))
    assert len(segments) == 1, segments
    return segments[0]


class FailingFdatasync:
    """Stands in for ``os.fdatasync``: passes through until ``armed``, then fails with EIO
    (counting the calls). ``restore()`` puts the real one back, e.g. before a reopen."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = False
        self.calls = 0
        self._real = os.fdatasync
        self._monkeypatch = monkeypatch
        monkeypatch.setattr(os, "fdatasync", self)

    def __call__(self, fd: int) -> None:
        if self.armed:
            self.calls += 1
            raise OSError(errno.EIO, "Input/output error")
        self._real(fd)

    def restore(self) -> None:
        self._monkeypatch.setattr(os, "fdatasync", self._real)


def append_group(segment: Path, *records: bytes) -> int:
    """Append ``records`` to ``segment`` as one format-2 group, as the appender would;
    returns the offset where the group starts."""
    meta = read_meta(segment.parent)
    offset = segment.stat().st_size
    seq = int(segment.name.split("-")[1].split(".")[0])
    body = b"".join(records)
    with open(segment, "ab") as f:
        f.write(group_header(meta.salt, seq, offset, len(body), len(records)) + body)
    return offset


async def eventually(predicate: Callable[[], bool], seconds: float = 10) -> None:
    """Poll a condition the log reaches by itself (e.g. writable again once space is back)."""
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        await trio.sleep(0.01)
    raise AssertionError("condition not reached in time")
