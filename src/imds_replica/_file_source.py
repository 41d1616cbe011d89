"""``FileSource``: a drop directory of per-VM JSON documents, diffed into events.

Each ``<VMID>.json`` holds a document such as ``{"compute": {...}, "network": {...}}``. Every
top-level field of every section is one register, ``("vms", VMID, SECTION, FIELD)``: a file
edit produces events only for the fields it changed, a removed field or file produces
tombstones for this source's registers of that VM.

The diff (``parse_document``, ``diff_document``) is pure and compares against the replica's
*view*, never an in-memory copy, so a restarted source diffs correctly. The trio part only
reads the directory (in a worker thread), hands each changed file to the diff, and submits
the events with its cursor — a mapping file name → content hash — so unchanged files are not
even parsed after a restart. A malformed or half-written file (bad JSON, not an object,
invalid values, unreadable) is reported and its previous data kept: no event is produced for
it and its cursor entry is left as it was, so it is retried on every scan until it is fixed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from ._clock import HybridClock
from ._codec import parse_json
from ._errors import ConfigError, ValidationError
from ._event import SOURCE_RE, Event, Key
from ._liveliness import LivelinessPolicy
from ._source import SourceSink
from ._view import View

logger = logging.getLogger(__name__)

SUFFIX = ".json"
#: Files larger than this are refused unread (a document is a few KiB).
DEFAULT_MAX_FILE_BYTES = 16 * 1024 * 1024
#: A scan with many changed files is submitted in batches of about this many events.
DEFAULT_MAX_BATCH_EVENTS = 4096


# -- the pure diff -------------------------------------------------------------------------

def parse_document(data: bytes) -> dict[str, Any]:
    """Decode one file's bytes into a document (a JSON object), or raise ``ValidationError``.

    An empty or truncated file (a writer caught mid-write) always fails here: a JSON object
    is only complete with its closing brace.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise ValidationError("empty file (half-written?)")
    document = parse_json(text)
    if not isinstance(document, dict):
        raise ValidationError(f"must be a JSON object, not {_json_type(document)}")
    return document


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def diff_document(view: View, source: str, vmid: str, document: Mapping[str, Any] | None,
                  version: int) -> list[Event]:
    """The events that make ``source``'s registers of ``vmid`` match ``document``.

    ``document`` is the file's content (``None`` when the file is gone). A field is written
    (at ``version``) unless the view already holds exactly that value *from this source*;
    every live register of this source under ``("vms", vmid)`` that the document no longer
    has gets a tombstone. Registers of other sources are never tombstoned. Raises
    ``ValidationError`` naming the section and field when the document is invalid, and then
    returns nothing: a file is applied whole or not at all.
    """
    prefix: Key = ("vms", vmid)
    ours = {e.key for e in view.registers(prefix) if e.source == source and not e.deleted}
    events: list[Event] = []
    wanted: set[Key] = set()
    if document is not None:
        if not isinstance(document, Mapping):
            raise ValidationError(f"must be a JSON object, not {_json_type(document)}")
        for section in sorted(document):
            fields = document[section]
            if not isinstance(fields, Mapping):
                raise ValidationError(
                    f"{section}: must be an object of fields, not {_json_type(fields)}"
                )
            for field in sorted(fields):
                try:
                    event = Event(source, (*prefix, section, field), version, fields[field])
                except ValidationError as exc:
                    raise ValidationError(f"{section}.{field}: {exc.message}") from None
                wanted.add(event.key)
                current = view.get(event.key)
                # Skip only what this source already holds: a register held by another
                # source (even with an equal value) is re-asserted, so a later tombstone
                # from that source cannot silently remove a field this file still has.
                if (current is None or current.source != source or current.deleted
                        or current.encoded != event.encoded):
                    events.append(event)
    for key in sorted(ours - wanted):
        events.append(Event(source, key, version, deleted=True))
    return events


def _vmid(filename: str) -> str:
    return filename[: -len(SUFFIX)]


# -- reading the directory (runs in a worker thread) ---------------------------------------

@attrs.frozen
class _FileRead:
    digest: str | None  # content hash; None when the file could not be read
    data: bytes | None  # the content, only when it differs from the cursor's hash
    error: str | None = None


def _content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _read_directory(directory: Path, known: Mapping[str, str],
                    max_bytes: int) -> dict[str, _FileRead]:
    """Every ``*.json`` document in ``directory``; raises ``OSError`` if it cannot be listed.

    Hidden files (editors' and atomic writers' temporaries) and other suffixes are ignored.
    """
    found: dict[str, _FileRead] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if not name.endswith(SUFFIX) or name.startswith(".") or name == SUFFIX:
                continue
            try:
                if not entry.is_file():
                    continue
                with open(entry.path, "rb") as f:
                    data = f.read(max_bytes + 1)
            except FileNotFoundError:
                continue  # removed between listing and reading: it is gone
            except OSError as exc:
                found[name] = _FileRead(None, None, f"cannot read: {exc.strerror or exc}")
                continue
            if len(data) > max_bytes:
                found[name] = _FileRead(None, None, f"larger than {max_bytes} bytes")
                continue
            digest = _content_hash(data)
            found[name] = _FileRead(digest, None if known.get(name) == digest else data)
    return found


# -- the trio loop -------------------------------------------------------------------------

@attrs.frozen
class ScanResult:
    """What one scan did. ``malformed`` maps a refused file to the reason."""

    ok: bool  # the directory could be read
    changed: tuple[str, ...] = ()  # files whose new content was applied
    removed: tuple[str, ...] = ()  # files (or VMs left without a file) tombstoned
    malformed: Mapping[str, str] = attrs.field(factory=dict)
    events: int = 0
    error: str | None = None  # why the directory could not be read


@attrs.frozen
class FileSourceStatistics:
    scans: int
    failed_scans: int  # the directory could not be read
    files: int  # documents seen by the last successful scan
    applied_files: int  # file changes applied since start
    removed_files: int
    malformed_files: int  # files currently refused (their previous data is kept)
    events: int  # events submitted since start


@attrs.frozen
class _Change:
    name: str
    digest: str | None  # the new cursor entry; None removes it
    events: tuple[Event, ...]


class FileSource:
    """A directory of ``<VMID>.json`` documents, scanned every ``interval`` seconds.

    The first scan runs before ``run`` reports started, so once ``open_replica`` yields, the
    directory's content is in the view. Each successful scan reports contact; a directory
    that cannot be read is a failure and changes nothing (an unmounted directory does not
    delete the fleet); a malformed file is reported as a failure after the scan's contact,
    so the source stays live with ``last_error`` naming the file until it is fixed.

    Versions come from a ``HybridClock`` on the replica's clock, started past the newest
    version of this source in the view, so they never go backwards across restarts.
    """

    def __init__(self, name: str, directory: str | os.PathLike[str], *, interval: float = 1.0,
                 policy: LivelinessPolicy | None = None,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 max_batch_events: int = DEFAULT_MAX_BATCH_EVENTS) -> None:
        if not isinstance(name, str) or not SOURCE_RE.match(name):
            raise ConfigError(f"{name!r} must match [a-z0-9][a-z0-9_.-]{{0,63}}", key="name")
        if not interval > 0:
            raise ConfigError(f"{interval!r} must be > 0 seconds", key="interval")
        self.name = name
        self.directory = Path(directory)
        self.interval = interval
        self.policy = policy or LivelinessPolicy(
            interval=interval, stale_after=5 * interval, expired_after=max(60 * interval, 300),
            hlc_versions=True,
        )
        self.max_file_bytes = max_file_bytes
        self.max_batch_events = max(1, max_batch_events)
        self._sink: SourceSink | None = None
        self._clock = HybridClock()
        self._cursor: dict[str, str] = {}
        # VMs holding this source's registers at start; those without a file are tombstoned
        # by the first successful scan (a file removed while we were down, a lost cursor).
        self._orphans: set[str] | None = None
        self._warned: dict[str, str] = {}  # file -> reason already logged
        self._lock = trio.Lock()
        self._scans = self._failed_scans = self._files = 0
        self._applied = self._removed = self._events = 0

    async def run(self, sink: SourceSink, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self._attach(sink)
        await self.scan()
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            await self.scan()

    def _attach(self, sink: SourceSink) -> None:
        self._sink = sink
        cursor = sink.cursor
        if cursor is None:
            self._cursor = {}
        elif isinstance(cursor, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in cursor.items()
        ):
            self._cursor = dict(cursor)
        else:
            # Not ours (a changed adapter kind under the same name?). Diffing against the
            # view makes a full rescan safe: it only re-reads, it writes nothing twice.
            logger.warning("file source %s: ignoring unusable cursor %.80r; rescanning all",
                           self.name, cursor)
            self._cursor = {}
        self._orphans = set()
        for event in sink.view.registers(("vms",)):
            if event.source == self.name:
                self._clock.observe(event.version)
                if not event.deleted and len(event.key) >= 2:
                    self._orphans.add(event.key[1])

    @property
    def cursor(self) -> Mapping[str, str]:
        """File name → content hash of every file applied (what the log holds)."""
        return dict(self._cursor)

    async def scan(self) -> ScanResult:
        """Scan the directory once now (serialized with the periodic scans)."""
        if self._sink is None:
            raise RuntimeError("FileSource.scan() before run() started the source")
        async with self._lock:
            return await self._scan(self._sink)

    async def _scan(self, sink: SourceSink) -> ScanResult:
        self._scans += 1
        try:
            listing = await trio.to_thread.run_sync(
                _read_directory, self.directory, dict(self._cursor), self.max_file_bytes
            )
        except OSError as exc:
            self._failed_scans += 1
            error = f"cannot read directory {self.directory}: {exc.strerror or exc}"
            if self._warned.get("") != error:
                logger.warning("file source %s: %s; keeping the previous data", self.name, error)
                self._warned[""] = error
            sink.failure(error)
            return ScanResult(ok=False, error=error)
        self._warned.pop("", None)
        self._files = len(listing)
        bad: dict[str, str] = {}
        changes: list[_Change] = []
        for name in sorted(listing):
            read = listing[name]
            if read.error is not None:
                bad[name] = read.error
            elif read.data is not None:
                try:
                    document = parse_document(read.data)
                    events = diff_document(sink.view, self.name, _vmid(name), document,
                                           self._version(sink))
                except ValidationError as exc:
                    bad[name] = exc.message
                    continue
                changes.append(_Change(name, read.digest, tuple(events)))
        gone = [n for n in sorted(self._cursor) if n not in listing]
        present = {_vmid(n) for n in listing} | {_vmid(n) for n in gone}
        gone += [vmid + SUFFIX for vmid in sorted((self._orphans or set()) - present)]
        self._orphans = None
        for name in gone:
            events = diff_document(sink.view, self.name, _vmid(name), None, self._version(sink))
            changes.append(_Change(name, None, tuple(events)))

        applied = await self._submit(sink, changes, bad)
        self._report(sink, bad)
        changed = tuple(c.name for c in applied if c.digest is not None)
        removed = tuple(c.name for c in applied if c.digest is None)
        self._applied += len(changed)
        self._removed += len(removed)
        n_events = sum(len(c.events) for c in applied)
        self._events += n_events
        return ScanResult(ok=True, changed=changed, removed=removed, malformed=bad,
                          events=n_events)

    def _version(self, sink: SourceSink) -> int:
        return self._clock.now(int(sink.now() * 1000))

    async def _submit(self, sink: SourceSink, changes: Sequence[_Change],
                      bad: dict[str, str]) -> list[_Change]:
        """Submit the changes in batches, each with the cursor after it; returns the applied.

        A batch the replica refuses (e.g. a value over its configured size limit) names the
        event's index: that file is set aside as malformed and the rest resubmitted.
        """
        applied: list[_Change] = []
        for chunk in _chunks(changes, self.max_batch_events):
            while chunk:
                events = [e for change in chunk for e in change.events]
                cursor = dict(self._cursor)
                for change in chunk:
                    if change.digest is None:
                        cursor.pop(change.name, None)
                    else:
                        cursor[change.name] = change.digest
                try:
                    await sink.submit(events, cursor)
                except ValidationError as exc:
                    culprit, reason = _blame(chunk, exc)
                    bad[culprit.name] = reason
                    chunk = [c for c in chunk if c is not culprit]
                    continue
                self._cursor = cursor
                applied.extend(chunk)
                break
        return applied

    def _report(self, sink: SourceSink, bad: Mapping[str, str]) -> None:
        for name, reason in bad.items():
            if self._warned.get(name) != reason:
                logger.warning("file source %s: %s/%s refused: %s; keeping its previous data",
                               self.name, self.directory, name, reason)
        for name in [n for n in self._warned if n and n not in bad]:
            logger.info("file source %s: %s is valid again", self.name, name)
            del self._warned[name]
        self._warned.update(bad)
        sink.contact()
        if bad:
            # After contact, so that the error stays visible while the source stays live.
            first = min(bad)
            more = f" (and {len(bad) - 1} more malformed)" if len(bad) > 1 else ""
            sink.failure(f"{first}: {bad[first]}{more}")

    def statistics(self) -> FileSourceStatistics:
        return FileSourceStatistics(
            scans=self._scans, failed_scans=self._failed_scans, files=self._files,
            applied_files=self._applied, removed_files=self._removed,
            malformed_files=len([n for n in self._warned if n]), events=self._events,
        )


def _chunks(changes: Iterable[_Change], max_events: int) -> Iterable[list[_Change]]:
    chunk: list[_Change] = []
    size = 0
    for change in changes:
        if chunk and size + len(change.events) > max_events:
            yield chunk
            chunk, size = [], 0
        chunk.append(change)
        size += len(change.events)
    if chunk:
        yield chunk


def _blame(chunk: Sequence[_Change], exc: ValidationError) -> tuple[_Change, str]:
    """The change holding the event a refused batch names, and the reason for its file."""
    if exc.index is None:
        return chunk[0], exc.message
    reason = exc.message.removeprefix(f"event {exc.index}: ")
    offset = 0
    for change in chunk:
        if exc.index < offset + len(change.events):
            key = change.events[exc.index - offset].key
            return change, f"{'.'.join(key[2:])}: {reason}"
        offset += len(change.events)
    return chunk[-1], reason
