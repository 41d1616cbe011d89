"""``FileSource``: a drop directory of per-VM JSON documents, diffed into events.

Each ``<VMID>.json`` holds a document such as ``{"compute": {...}, "network": {...}}``. Every
top-level field of every section is one register, ``("vms", VMID, SECTION, FIELD)``: a file
edit produces events only for the fields it changed, a removed field or file produces
tombstones for this source's registers of that VM.

**A file is diffed against its own previous content**, not against the view: the source
keeps, with the data, one record per file — the register ``("sources", NAME, VMID)``
holding the file's content hash and a digest of each field it had — written in the same
batch as the file's field events. A field the file did not change is never written again,
so a newer deletion (or another source's newer value) of one field sticks however often
unrelated fields of the file are edited. A file the source has no record of (new, or known
only from a log written before records existed) is diffed against this source's registers
in the view, as before. The record also makes unchanged files cheap after a restart: a file
whose content hash equals its record's is not even parsed. The cursor is therefore small
and of fixed size (``{"format": 2}``), not a map of every file.

**An empty directory proves nothing.** An unmounted mountpoint is an existing, empty
directory. A listing with no document at all is taken as "every file was removed" only when
the directory holds the marker file ``.imds-drop`` (``MARKER``; create it once with
``touch DIR/.imds-drop`` on the real drop volume). Without it such a scan removes nothing, is
reported as a failure naming the marker (the data ages, ``withheld_removals`` counts the
files kept) and the removals happen once the marker or a document is back. Likewise at
start, VMs holding this source's registers without any file record (orphans of a lost
state) are swept only in a directory holding the marker. Removing some files from a
directory that still has others works with or without the marker.

A malformed or half-written file (bad JSON, not an object, invalid values, unreadable) is
reported and its previous data kept: no event is produced for it and its record is left as
it was, so it is retried on every scan until it is fixed.

Versions come from a ``HybridClock`` started past this source's newest version in the view,
bounded by ``max_clock_drift``: a register claiming this source's name far in the future
(an event posted by hand) is counted and logged, and does not drag later versions ahead.
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

from ._clock import DEFAULT_MAX_DRIFT_MS, HybridClock, hlc_version, version_wall_ms
from ._codec import parse_json
from ._errors import ConfigError, ValidationError
from ._event import SOURCE_RE, Event, Key
from ._liveliness import LivelinessPolicy
from ._source import SourceSink
from ._view import View

logger = logging.getLogger(__name__)

SUFFIX = ".json"
#: The file that proves a directory is the real drop directory (see the module docstring).
MARKER = ".imds-drop"
#: The first key part of the per-file records: ``("sources", NAME, VMID)``.
RECORDS = "sources"
#: The cursor: of fixed size, the records are what a restart resumes from.
CURSOR: Mapping[str, Any] = {"format": 2}
#: How far ahead of the local clock this source's own records may be and still be followed
#: (a host whose clock stepped back while it was down; beyond this, it is a forged record).
_TRUSTED_AHEAD_MS = 10 * 366 * 86_400_000
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
                  version: int, *, previous: Mapping[Key, str] | None = None) -> list[Event]:
    """The events that make ``source``'s registers of ``vmid`` match ``document``.

    ``document`` is the file's content (``None`` when the file is gone). ``previous`` maps
    each field register the file had last time to its digest (``field_digest``): a field
    with the same digest is unchanged and not written, whatever the view holds now (a newer
    deletion or another source's newer value stays). Without ``previous`` (a file seen for
    the first time) a field is written unless the view already holds exactly that value
    from this source. Either way every live register of this source under ``("vms",
    vmid)`` that the document no longer has gets a tombstone; registers of other sources
    are never tombstoned. Raises ``ValidationError`` naming the section and field when the
    document is invalid, and then returns nothing: a file is applied whole or not at all.
    """
    prefix: Key = ("vms", vmid)
    ours = {e.key for e in view.registers(prefix) if e.source == source and not e.deleted}
    events: list[Event] = []
    wanted: set[Key] = set()
    for event in _field_events(source, prefix, document, version):
        wanted.add(event.key)
        if previous is not None:
            if previous.get(event.key) != field_digest(event):
                events.append(event)
            continue
        current = view.get(event.key)
        if (current is None or current.source != source or current.deleted
                or current.encoded != event.encoded):
            events.append(event)
    for key in sorted(ours - wanted):
        events.append(Event(source, key, version, deleted=True))
    return events


def _field_events(source: str, prefix: Key, document: Mapping[str, Any] | None,
                  version: int) -> list[Event]:
    """One event per field of ``document``, in key order (``ValidationError`` if invalid)."""
    if document is None:
        return []
    if not isinstance(document, Mapping):
        raise ValidationError(f"must be a JSON object, not {_json_type(document)}")
    events = []
    for section in sorted(document):
        fields = document[section]
        if not isinstance(fields, Mapping):
            raise ValidationError(
                f"{section}: must be an object of fields, not {_json_type(fields)}"
            )
        for field in sorted(fields):
            try:
                events.append(Event(source, (*prefix, section, field), version, fields[field]))
            except ValidationError as exc:
                raise ValidationError(f"{section}.{field}: {exc.message}") from None
    return events


def field_digest(event: Event) -> str:
    """What a file record keeps of one field: enough to tell whether its value changed."""
    return event.digest[:8].hex()


def _record_value(content: str, fields: Iterable[Event]) -> dict[str, Any]:
    sections: dict[str, dict[str, str]] = {}
    for event in fields:
        sections.setdefault(event.key[2], {})[event.key[3]] = field_digest(event)
    return {"content": content, "fields": sections}


@attrs.frozen
class _Record:
    """What the source last applied of one file (decoded from its record register)."""

    content: str | None  # the file's content hash (None: unknown, a legacy entry)
    fields: Mapping[Key, str] | None  # field register -> digest (None: unknown)


def _decode_record(vmid: str, value: Any) -> _Record | None:
    """A record register's value, or None when it is not one this code wrote."""
    if not isinstance(value, Mapping) or not isinstance(value.get("content"), str):
        return None
    sections = value.get("fields")
    if not isinstance(sections, Mapping):
        return None
    fields: dict[Key, str] = {}
    for section, names in sections.items():
        if not isinstance(names, Mapping):
            return None
        for field, digest in names.items():
            if not isinstance(digest, str):
                return None
            fields[("vms", vmid, section, field)] = digest
    return _Record(value["content"], fields)


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


@attrs.frozen
class _Listing:
    files: Mapping[str, _FileRead]
    marker: bool  # the directory holds ``MARKER``


def _read_directory(directory: Path, known: Mapping[str, str], max_bytes: int) -> _Listing:
    """Every ``*.json`` document in ``directory``; raises ``OSError`` if it cannot be listed.

    Hidden files (editors' and atomic writers' temporaries) and other suffixes are ignored.
    """
    found: dict[str, _FileRead] = {}
    marker = False
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if name == MARKER:
                marker = True
                continue
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
    return _Listing(found, marker)


# -- the trio loop -------------------------------------------------------------------------

@attrs.frozen
class ScanResult:
    """What one scan did. ``malformed`` maps a refused file to the reason."""

    ok: bool  # the directory could be read (and, if it was empty, proved by its marker)
    changed: tuple[str, ...] = ()  # files whose new content was applied
    removed: tuple[str, ...] = ()  # files (or VMs left without a file) tombstoned
    malformed: Mapping[str, str] = attrs.field(factory=dict)
    events: int = 0
    error: str | None = None  # why the directory could not be read or trusted
    #: Files (or VMs) gone from an unproven, empty listing: kept, not removed.
    withheld: tuple[str, ...] = ()


@attrs.frozen
class FileSourceStatistics:
    scans: int
    failed_scans: int  # the directory could not be read
    files: int  # documents seen by the last successful scan
    applied_files: int  # file changes applied since start
    removed_files: int
    malformed_files: int  # files currently refused (their previous data is kept)
    events: int  # events submitted since start
    #: Scans whose removals were withheld: an empty listing without the marker.
    unproven_scans: int = 0
    #: Files (or VMs) whose removal the last scan withheld (their data is kept).
    withheld_removals: int = 0
    #: Registers of this source seen at start beyond the clock's drift bound.
    clock_beyond_drift: int = 0


@attrs.frozen
class _Change:
    name: str
    content: str | None  # the file's new content hash; None: the file is gone
    events: tuple[Event, ...]
    record: _Record | None  # what the file record says once this change is applied


class FileSource:
    """A directory of ``<VMID>.json`` documents, scanned every ``interval`` seconds.

    The first scan runs before ``run`` reports started, so once ``open_replica`` yields, the
    directory's content is in the view. Each successful scan reports contact; a directory
    that cannot be read, or is empty without the ``MARKER`` file while files are known, is
    a failure and removes nothing (an unmounted directory does not delete the fleet); a
    malformed file is reported as a failure after the scan's contact, so the source stays
    live with ``last_error`` naming the file until it is fixed.

    Versions come from a ``HybridClock`` on the replica's clock, started past the newest
    version of this source in the view (at most ``max_clock_drift`` seconds ahead of the
    replica's clock), so they never go backwards across restarts.
    """

    def __init__(self, name: str, directory: str | os.PathLike[str], *, interval: float = 1.0,
                 policy: LivelinessPolicy | None = None,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 max_batch_events: int = DEFAULT_MAX_BATCH_EVENTS,
                 max_clock_drift: float = DEFAULT_MAX_DRIFT_MS / 1000) -> None:
        if not isinstance(name, str) or not SOURCE_RE.match(name):
            raise ConfigError(f"{name!r} must match [a-z0-9][a-z0-9_.-]{{0,63}}", key="name")
        if not interval > 0:
            raise ConfigError(f"{interval!r} must be > 0 seconds", key="interval")
        if not max_clock_drift > 0:
            raise ConfigError(f"{max_clock_drift!r} must be > 0 seconds",
                              key="max_clock_drift")
        self.name = name
        self.directory = Path(directory)
        self.interval = interval
        self.policy = policy or LivelinessPolicy(
            interval=interval, stale_after=5 * interval, expired_after=max(60 * interval, 300),
            hlc_versions=True,
        )
        self.max_file_bytes = max_file_bytes
        self.max_batch_events = max(1, max_batch_events)
        self.max_clock_drift = max_clock_drift
        self._sink: SourceSink | None = None
        self._clock = HybridClock(max_drift_ms=max(1, round(max_clock_drift * 1000)))
        #: File name -> what was last applied of it (from the records in the view).
        self._records: dict[str, _Record] = {}
        # VMs holding this source's registers at start without a record: swept by the first
        # proven scan when they have no file either (a lost state, a log from before records).
        self._orphans: set[str] = set()
        self._warned: dict[str, str] = {}  # file -> reason already logged
        self._lock = trio.Lock()
        self._scans = self._failed_scans = self._files = 0
        self._applied = self._removed = self._events = 0
        self._unproven = 0
        self._withheld: tuple[str, ...] = ()

    async def run(self, sink: SourceSink, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self._attach(sink)
        await self.scan()
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            await self.scan()

    def _attach(self, sink: SourceSink) -> None:
        self._sink = sink
        wall_ms = int(sink.now() * 1000)
        self._records = {}
        for event in sink.view.registers((RECORDS, self.name)):
            if event.source != self.name or len(event.key) != 3 or event.deleted:
                continue
            record = _decode_record(event.key[2], event.value)
            if record is not None:
                self._records[event.key[2] + SUFFIX] = record
        # A cursor of the first format was a map file name -> content hash: its files count
        # as known (their fields unknown), so a file unchanged since is recorded without
        # writing any of its fields again.
        cursor = sink.cursor
        if isinstance(cursor, Mapping) and cursor and all(
                isinstance(k, str) and k.endswith(SUFFIX) and isinstance(v, str)
                for k, v in cursor.items()):
            for name, content in cursor.items():
                self._records.setdefault(name, _Record(content, None))
        elif cursor is not None and cursor != CURSOR:
            logger.warning("file source %s: ignoring unusable cursor %.80r", self.name, cursor)
        # The clock starts past this source's own records (written only by this source,
        # in the batches of its fields), trusted as far as a clock stepped back a long way
        # needs; the fields' registers are observed within the drift bound (one posted by
        # hand under this name can lie anywhere, up to the end of the version space).
        trusted = hlc_version(wall_ms + _TRUSTED_AHEAD_MS)
        own = [e.version for e in sink.view.registers((RECORDS, self.name))
               if e.source == self.name and e.version <= trusted]
        clock = self._clock = HybridClock(max(own, default=0),
                                          max_drift_ms=self._clock.max_drift_ms)
        self._orphans = set()
        for event in sink.view.registers(("vms",)):
            if event.source == self.name:
                clock.observe(event.version, wall_ms)
                if not event.deleted and len(event.key) >= 2 \
                        and event.key[1] + SUFFIX not in self._records:
                    self._orphans.add(event.key[1])
        if clock.beyond_drift:
            logger.warning(
                "file source %s: %d register(s) of this source lie beyond the clock's drift "
                "bound (%.0f s; furthest at %d ms since the epoch, local time %d ms): not "
                "following them; were events posted under this source's name?", self.name,
                clock.beyond_drift, self.max_clock_drift,
                version_wall_ms(clock.furthest_refused), wall_ms)

    @property
    def cursor(self) -> Mapping[str, Any]:
        """The cursor persisted with each batch: of fixed size (the records hold the rest)."""
        return dict(CURSOR)

    @property
    def files(self) -> Mapping[str, str | None]:
        """File name -> content hash of every file applied (None: known, hash unknown)."""
        return {name: r.content for name, r in self._records.items()}

    async def scan(self) -> ScanResult:
        """Scan the directory once now (serialized with the periodic scans)."""
        if self._sink is None:
            raise RuntimeError("FileSource.scan() before run() started the source")
        async with self._lock:
            return await self._scan(self._sink)

    async def _scan(self, sink: SourceSink) -> ScanResult:
        self._scans += 1
        known = {n: r.content for n, r in self._records.items()
                 if r.content is not None and r.fields is not None}
        try:
            listing = await trio.to_thread.run_sync(
                _read_directory, self.directory, known, self.max_file_bytes
            )
        except OSError as exc:
            self._failed_scans += 1
            error = f"cannot read directory {self.directory}: {exc.strerror or exc}"
            if self._warned.get("") != error:
                logger.warning("file source %s: %s; keeping the previous data", self.name, error)
                self._warned[""] = error
            sink.failure(error)
            return ScanResult(ok=False, error=error)
        files = listing.files
        self._files = len(files)
        bad: dict[str, str] = {}
        changes: list[_Change] = []
        for name in sorted(files):
            read = files[name]
            if read.error is not None:
                bad[name] = read.error
            elif read.data is not None:
                assert read.digest is not None
                try:
                    change = self._file_changed(sink, name, read.digest, read.data)
                except ValidationError as exc:
                    bad[name] = exc.message
                    continue
                changes.append(change)
        present = {_vmid(n) for n in files}
        gone = [n for n in sorted(self._records) if n not in files]
        if listing.marker:
            gone += [vmid + SUFFIX for vmid in sorted(self._orphans - present)
                     if vmid + SUFFIX not in self._records]
        # Only a directory that proves it is the drop directory may say "everything is gone".
        withheld: tuple[str, ...] = ()
        if gone and not files and not listing.marker:
            withheld, gone = tuple(gone), []
        elif listing.marker or files:
            self._orphans = set() if listing.marker else self._orphans
        for name in gone:
            events = diff_document(sink.view, self.name, _vmid(name), None, self._version(sink))
            if name in self._records:
                events.append(self._record_event(sink, name, None, events))
            changes.append(_Change(name, None, tuple(events), None))

        applied = await self._submit(sink, changes, bad)
        self._withheld = withheld
        if withheld:
            self._unproven += 1
            return self._report_withheld(sink, withheld, bad)
        self._warned.pop("", None)
        self._report(sink, bad)
        changed = tuple(c.name for c in applied if c.content is not None)
        removed = tuple(c.name for c in applied if c.content is None)
        n_events = sum(len(c.events) for c in applied)
        return ScanResult(ok=True, changed=changed, removed=removed, malformed=bad,
                          events=n_events)

    def _file_changed(self, sink: SourceSink, name: str, content: str,
                      data: bytes) -> _Change:
        """The change a file's new content makes (``ValidationError`` if it is invalid)."""
        document = parse_document(data)
        vmid = _vmid(name)
        record = self._records.get(name)
        version = self._version(sink)
        if record is not None and record.fields is None and record.content == content:
            # Known from a first-format cursor and unchanged since: only record it.
            events = []
        else:
            previous = None if record is None else record.fields
            events = diff_document(sink.view, self.name, vmid, document, version,
                                   previous=previous)
        fields = _field_events(self.name, ("vms", vmid), document, version)
        new = _Record(content, {e.key: field_digest(e) for e in fields})
        events.append(Event(self.name, (RECORDS, self.name, vmid), version,
                            _record_value(content, fields)))
        return _Change(name, content, tuple(events), new)

    def _record_event(self, sink: SourceSink, name: str, content: str | None,
                      events: Sequence[Event]) -> Event:
        version = events[0].version if events else self._version(sink)
        return Event(self.name, (RECORDS, self.name, _vmid(name)), version, deleted=True)

    def _version(self, sink: SourceSink) -> int:
        return self._clock.now(int(sink.now() * 1000))

    async def _submit(self, sink: SourceSink, changes: Sequence[_Change],
                      bad: dict[str, str]) -> list[_Change]:
        """Submit the changes in batches, each with the cursor; returns the applied.

        A batch the replica refuses (e.g. a value over its configured size limit) names the
        event's index: that file is set aside as malformed and the rest resubmitted.
        """
        applied: list[_Change] = []
        for chunk in _chunks(changes, self.max_batch_events):
            while chunk:
                events = [e for change in chunk for e in change.events]
                try:
                    await sink.submit(events, self.cursor)
                except ValidationError as exc:
                    culprit, reason = _blame(chunk, exc)
                    bad[culprit.name] = reason
                    chunk = [c for c in chunk if c is not culprit]
                    continue
                for change in chunk:
                    if change.record is None:
                        self._records.pop(change.name, None)
                        self._orphans.discard(_vmid(change.name))
                    else:
                        self._records[change.name] = change.record
                applied.extend(chunk)
                break
        self._applied += sum(1 for c in applied if c.content is not None)
        self._removed += sum(1 for c in applied if c.content is None)
        self._events += sum(len(c.events) for c in applied)
        return applied

    def _report_withheld(self, sink: SourceSink, withheld: tuple[str, ...],
                         bad: Mapping[str, str]) -> ScanResult:
        error = (f"directory {self.directory} has no document and no marker file {MARKER}: "
                 f"not removing the {len(withheld)} file(s) known (unmounted?); create "
                 f"{self.directory / MARKER} on the real drop volume to allow it")
        if self._warned.get("") != error:
            logger.warning("file source %s: %s", self.name, error)
            self._warned[""] = error
        sink.failure(error)
        return ScanResult(ok=False, malformed=bad, error=error, withheld=withheld)

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
            unproven_scans=self._unproven, withheld_removals=len(self._withheld),
            clock_beyond_drift=self._clock.beyond_drift,
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
            where = ".".join(key[2:]) if key[0] == "vms" else "its file record"
            return change, f"{where}: {reason}"
        offset += len(change.events)
    return chunk[-1], reason
