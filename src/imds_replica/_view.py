"""The materialized view: one LWW register per key, and change tracking per document.

Registers live in a dict keyed by the key tuple, with a sorted index of the keys beside it
(brought up to date at the next ordered read), so a subtree (a VM's document, all caller
mappings) is a contiguous range. A *document* is the subtree a key belongs to: its
first ``document_depth`` parts (``("vms", VMID)``). Each document keeps a change counter, the
sources behind its registers, and a lazily computed content ETag, so the server learns what
changed (``subscribe``/``changed_since``) and how fresh it is without rescanning the view.

Compaction (``compact``) drops tombstones below per-source horizons when dropping them
changes no document, and remembers what it dropped (``CompactionState``: floors, so a late
older event stays a no-op, and version marks, so ``max_version`` never goes backwards);
see ``_horizon``.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from operator import itemgetter
from typing import Any

import attrs
import msgpack
from sortedcontainers import SortedList

from . import _codec
from ._event import TOMBSTONE_DIGEST, Event, Key
from ._horizon import HLC_SPACE_MIN, CompactionState, Horizons, is_hlc

logger = logging.getLogger(__name__)

#: A register as the log stores it: ``(source, key, version, deleted, encoded value, seq)``.
#: Recovery hands the view its winners in this form (``load_stored``) and the view builds
#: the ``Event`` only when the register is first read or overwritten (``stored_event``):
#: a replica starting on 1,000,000 keys otherwise spent most of its start building
#: Events (a value decode and a digest each) that no one would read for a long time.
Stored = tuple[str, tuple[str, ...], int, bool, bytes, "int | None"]
_source_of, _version_of, _deleted_of = itemgetter(0), itemgetter(2), itemgetter(3)


def stored_event(t: Stored) -> Event:
    """Rebuild an ``Event`` from a stored tuple without re-validating it.

    Stored events passed validation when first accepted and are protected by the record
    CRC; re-validating (normalize, re-encode) would make replay several times slower. The
    result equals ``Event(...)`` field for field (a test pins this).
    """
    source, key, version, deleted, encoded, seq = t
    event: Event = object.__new__(Event)
    setattr_ = object.__setattr__
    setattr_(event, "source", source)
    setattr_(event, "key", tuple(key))
    setattr_(event, "version", version)
    setattr_(event, "deleted", deleted)
    setattr_(event, "seq", seq)
    setattr_(event, "encoded", encoded)
    if deleted:
        setattr_(event, "value", None)
        setattr_(event, "digest", TOMBSTONE_DIGEST)
    else:
        setattr_(event, "value", _codec.decode(encoded))
        setattr_(event, "digest", _codec.digest(encoded))
    return event

_MISSING: Any = object()
#: How many (change, document) entries ``changed_since`` remembers.
CHANGE_HISTORY = 65536


@attrs.frozen
class ViewStatistics:
    registers: int
    tombstones: int
    documents: int
    applies: int
    noop_applies: int
    change_seq: int
    #: Late events below their source's compaction floor, for a key not held: ignored.
    floor_noops: int = 0


@attrs.frozen
class DocumentInfo:
    """What the server needs to cache, watch and date one document."""

    key: Key
    counter: int  # the view's change number at this document's latest change (only rises)
    etag: str  # content hash: equal on every replica holding the same document
    sources: frozenset[str]  # sources owning the registers behind it
    max_version: int  # greatest version of any event applied to it (compaction-proof)


class _Doc:
    __slots__ = ("counter", "etag", "max_version", "sources")

    def __init__(self) -> None:
        self.counter = 0
        #: source -> how many of this document's registers it owns (never zero).
        self.sources: dict[str, int] = {}
        self.etag: str | None = None
        self.max_version = -1


class StagedLoad:
    """``View.stage_stored``'s result: what ``View.load_staged`` installs."""

    __slots__ = ("base", "docs", "documents", "history", "index", "lazy", "ready", "registers",
                 "short", "tombstones")

    def __init__(self, registers: dict[Key, Stored], base: int) -> None:
        self.registers = registers
        self.base = base  # the view's change number when it was staged
        self.ready = False  # False: install by ``load``
        self.docs: dict[Key, _Doc] = {}
        self.tombstones = 0
        self.history: list[tuple[int, Key]] = []
        self.index = SortedList()
        self.short: list[Key] = []  # keys shallower than a document
        self.lazy = False  # True: documents are built on first use (``stage_stored``)
        self.documents = 0  # lazy: how many documents the registers make


class View:
    """LWW registers with documents built on demand. Not thread-safe; never awaits."""

    def __init__(self, *, document_depth: int = 2) -> None:
        self.document_depth = document_depth
        #: key -> winning event. A plain dict: a write costs one hash, not a sorted insert.
        #: A value may still be the ``Stored`` tuple recovery loaded: ``_event`` builds it.
        self._registers: dict[Key, Event | Stored] = {}
        #: The keys of ``_registers`` in order, as of the last ordered read, plus the keys
        #: added since (``_unindexed``). Sorting a commit's new keys in one go at the next
        #: read costs a fraction of inserting each one as it arrives.
        self._index: SortedList = SortedList()
        self._unindexed: list[Key] = []
        self._docs: dict[Key, _Doc] = {}
        self._tombstones = 0
        self._applies = 0
        self._noops = 0
        self._seq = 0
        self._history: deque[tuple[int, Key]] = deque(maxlen=CHANGE_HISTORY)
        self._listeners: list[Callable[[Key], None]] = []
        #: Compaction floors (see ``_horizon``): one for the hybrid-clock version space,
        #: one per counter source; and per-prefix version marks of what was dropped.
        self._hlc_floor = -1
        self._floors: dict[str, int] = {}
        self._marks: dict[Key, int] = {}
        self._floor_noops = 0
        #: Not None after a lazy ``load_staged``: documents of the registers it loaded are
        #: not in ``_docs`` until first needed (``_doc_for``), and this is their counter.
        self._lazy: int | None = None
        #: While lazy: how many of those documents are not built yet.
        self._lazy_left = 0

    # -- writing ---------------------------------------------------------------------------
    def apply(self, event: Event) -> bool:
        """Merge one event; True only if the register (and so the view) changed."""
        return self.apply_batch((event,))[0]

    def apply_batch(self, events: Iterable[Event]) -> tuple[bool, ...]:
        """Merge events in order; one flag per event: did it change the view.

        The hot path of every replica (each group commit of the log lands here), so the
        merge order is inlined (it is ``supersedes`` of ``_merge``, compared version first:
        most events are decided by the version alone) and per-call lookups are hoisted out
        of the loop. An event for a key the view does not hold, below its compaction floor,
        is a no-op (counted in ``floor_noops``): a late redelivery of something a dropped
        tombstone overrode. A new key goes into the register dict only; the sorted index learns
        it at the next ordered read (see ``_index_keys``). Listeners are called once the whole
        batch is applied, once per change in order (the apply and no-op counts of
        ``statistics`` are added first); a listener that raises is logged and the others
        still run (``_notify``): a bug in one cannot half-apply a group commit.
        """
        registers = self._registers
        get = registers.get
        unindexed = self._unindexed
        account = self._account
        depth = self.document_depth
        history = self._history
        changed: list[Key] = []
        note = changed.append
        short: list[Key] = []
        flags: list[bool] = []
        flag = flags.append
        noops = floored = 0
        floors = self._floors
        hlc_floor = self._hlc_floor
        floored_view = hlc_floor >= 0 or bool(floors)
        lazy = self._lazy is not None
        for event in events:
            key = event.key
            if lazy and key[:depth] not in self._docs:
                self._doc_for(key[:depth])  # its figures, before this event changes them
            old: Event | Stored | None = get(key)
            if old is None:
                if floored_view and _below_floor(event, hlc_floor, floors):
                    noops += 1
                    floored += 1
                    flag(False)
                    continue
                unindexed.append(key)
            else:
                if isinstance(old, tuple):  # loaded by recovery, not built yet
                    old = registers[key] = stored_event(old)
                version, old_version = event.version, old.version
                if version < old_version or (version == old_version and not _wins_tie(
                        event, old)):
                    noops += 1
                    flag(False)
                    continue
            registers[key] = event
            doc_key = key[:depth]
            self._tombstones += account(doc_key, old, event)
            self._seq += 1
            history.append((self._seq, doc_key))
            flag(True)
            note(doc_key)
            if len(key) < depth:
                short.append(key)
        self._applies += len(flags)
        self._noops += noops
        self._floor_noops += floored
        if changed and self._listeners:
            self._notify(changed)
        for key in short:
            self._changed_below(key)
        return tuple(flags)

    def _notify(self, doc_keys: list[Key]) -> None:
        """Tell every listener about each change; one that raises is logged, not fatal."""
        for doc_key in doc_keys:
            for listener in self._listeners:
                try:
                    listener(doc_key)
                except Exception:
                    logger.exception("view listener %r failed on a change to %s; the "
                                     "change is applied", listener, "/".join(doc_key))

    def load(self, events: Iterable[Event]) -> int:
        """Merge many events (recovery); returns how many changed the view. Ends in exactly
        the state ``apply_batch(events)`` does, with the sorted index already brought up to
        date: recovery pays for it, not the first guest request after a restart."""
        changed = sum(self.apply_batch(events))
        self._index_keys()
        return changed

    def load_stored(self, stored: dict[Key, Stored], *, lazy: bool = False) -> int:
        """``load`` of recovery's winners as stored tuples, one per key; the view takes
        the dict over (the caller must not use it afterwards). Returns how many changed.

        Ends in the state ``load([stored_event(t) for t in stored.values()])`` does, but
        into an empty view (no registers, documents, floors or listeners; else it is that
        ``load``) it builds no ``Event``: the dict becomes the register dict as it is
        (``_event`` builds a register's Event when it is first read or overwritten), and
        the per-document bookkeeping that ``apply_batch`` does per event is done per
        document from a few passes in C (``Counter``, ``dict(zip(...))``).

        It is ``load_staged(stage_stored(stored))``: recovery stages in its worker thread
        (about a second of work at 1,000,000 keys) and only the cheap install runs on the
        event loop. ``lazy``: see ``stage_stored``.
        """
        return self.load_staged(self.stage_stored(stored, lazy=lazy))

    def _fresh(self) -> bool:
        return not (self._registers or self._docs or self._listeners or self._floors
                    or self._hlc_floor >= 0 or self._unindexed or self._lazy is not None)

    def stage_stored(self, stored: dict[Key, Stored], *, lazy: bool = False) -> StagedLoad:
        """The work of ``load_stored`` that does not touch the view: safe in another
        thread while the view is not written to. Hand the result to ``load_staged``.

        ``lazy``: skip the per-document pass. The view then ends in the state of
        ``load_stored`` followed by ``resume_changes`` to the load's last change number
        with the history forgotten: every loaded document's counter is that number, and
        ``changed_since`` of an older one answers None. That is the state recovery leaves
        anyway (``FileLog.run`` resumes the change numbers above any the last run reached)
        and it lets a document's figures (sources, greatest version) be counted from its
        own registers when it is first asked about or written (``_doc_for``): at 1,000,000
        keys the per-document pass was over half of a replay (issue 15). Only the sorted
        index is built here: the first guest read needs it, so it must not pay for it.
        """
        staged = StagedLoad(stored, self._seq)
        n = len(stored)
        if not n or not self._fresh():
            return staged  # nothing to do, or ``load_staged`` falls back to ``load``
        depth = self.document_depth
        keys = list(stored)
        if lazy and min(map(len, keys)) >= depth:  # a shallower key changes many documents
            staged.index = SortedList(keys)
            staged.tombstones = sum(map(_deleted_of, stored.values()))
            # Counted here, in recovery's thread: ``statistics`` (every metrics scrape)
            # needs it, and counting on the event loop held it 0.7 s at 1,000,000 keys.
            staged.documents = len(set(map(itemgetter(slice(0, depth)), keys)))
            staged.lazy = staged.ready = True
            return staged
        values = list(stored.values())
        # Document keys are sliced on the fly by each pass (``doc_keys()``), never kept in
        # a list of one per register: a slice freed at once goes back to the tuple free
        # list and the next one reuses it, while a list of 1,000,000 live slices took
        # fresh memory for each (with the one loop per document below, staging 1,000,000
        # keys went from 1.07 to 0.95 s). The dicts built keep one key object per document.
        slicer = itemgetter(slice(0, depth))

        def doc_keys(of: list[Key] = keys) -> Iterator[Key]:
            return map(slicer, of)

        base = staged.base
        versions = list(map(_version_of, values))
        # The change number of each document's last change (``apply_batch`` numbers the
        # changes in order, later keys overwrite earlier ones), and its greatest version:
        # in the usual order (a log's versions grow with its position, and keys enter the
        # dict in log order) each document's last version is its greatest, so both come
        # from one pass in C.
        if versions == sorted(versions):
            changes = zip(range(base + 1, base + n + 1), versions, strict=True)
            last = dict(zip(doc_keys(), changes, strict=True))
        else:
            last = {}
            last_get = last.get
            for doc_key, change, version in zip(doc_keys(), range(base + 1, base + n + 1),
                                                versions, strict=True):
                had = last_get(doc_key)
                last[doc_key] = (change, version if had is None else max(had[1], version))
        del versions
        docs = staged.docs
        only = set(map(_source_of, values))
        if len(only) == 1:
            # One source owns every register (a host fed by one source): count keys per
            # document, without a (document, source) pair per register. ``Counter`` and
            # ``last`` list the documents in the same order (first appearance in the same
            # sequence), so they pair up by position: one loop, no second lookup.
            (source,) = only
            counts = Counter(doc_keys())
            for (doc_key, (counter, top)), count in zip(last.items(), counts.values(),
                                                        strict=True):
                doc = docs[doc_key] = _Doc()
                doc.counter = counter
                doc.max_version = top
                doc.sources[source] = count
        else:
            for doc_key, (counter, top) in last.items():
                doc = docs[doc_key] = _Doc()
                doc.counter = counter
                doc.max_version = top
            for (doc_key, source), count in Counter(zip(doc_keys(), map(_source_of, values),
                                                        strict=True)).items():
                docs[doc_key].sources[source] = count
        staged.tombstones = sum(map(_deleted_of, values))
        del values
        staged.history = list(zip(range(base + n - min(n, CHANGE_HISTORY) + 1, base + n + 1),
                                  doc_keys(keys[-CHANGE_HISTORY:]), strict=True))
        staged.index = SortedList(keys)
        if min(map(len, keys)) < depth:
            staged.short = [key for key in keys if len(key) < depth]
        staged.ready = True
        return staged

    def load_staged(self, staged: StagedLoad) -> int:
        """Install what ``stage_stored`` prepared (its registers, documents, index and
        history, in O(1) but for the history), or, if the view was written to since (or
        was not fresh), ``load`` the registers the old way. Returns how many changed."""
        stored = staged.registers
        n = len(stored)
        if not (staged.ready and self._fresh() and self._seq == staged.base):
            if not n and self._fresh():
                return 0
            return self.load([stored_event(t) for t in stored.values()])
        self._registers = stored  # type: ignore[assignment]  # Stored values are allowed
        self._docs = staged.docs
        self._tombstones += staged.tombstones
        self._seq = staged.base + n
        self._applies += n
        self._history.extend(staged.history)
        self._index = staged.index
        if staged.lazy:
            self._lazy = self._seq
            self._lazy_left = staged.documents
        for key in staged.short:
            self._changed_below(key)
        return n

    def _account(self, doc_key: Key, old: Event | None, event: Event) -> int:
        """Move one register's document bookkeeping from ``old`` to ``event`` (its new
        winner); returns the change in the tombstone count. Shared by ``apply`` and
        ``load`` so the two can never account differently."""
        doc = self._docs.get(doc_key)
        if doc is None:
            doc = self._docs[doc_key] = _Doc()
        sources = doc.sources
        source = event.source
        delta = 1 if event.deleted else 0
        if old is None:
            sources[source] = sources.get(source, 0) + 1
        else:
            if old.deleted:
                delta -= 1
            if old.source != source:
                _release(sources, old.source)
                sources[source] = sources.get(source, 0) + 1
        if event.version > doc.max_version:
            doc.max_version = event.version
        doc.counter = self._seq + 1  # the change number this change is about to get
        doc.etag = None
        return delta

    def _doc_for(self, doc_key: Key) -> _Doc | None:
        """The document ``doc_key``, built first if a lazy load left it unbuilt; None if
        the view has no such document.

        An unbuilt document's figures are exactly what ``_account`` would have made of
        its registers, all of them loaded (a write builds the document before it changes
        a register, compaction before it drops one): one per register for its source,
        the greatest version (a key's register holds its greatest version), and the
        lazy load's counter."""
        docs = self._docs
        doc = docs.get(doc_key)
        if doc is not None or self._lazy is None or len(doc_key) != self.document_depth:
            return doc
        registers = self._registers
        end = (*doc_key[:-1], doc_key[-1] + "\x00")
        sources: dict[str, int] = {}
        top = -1
        for key in self._index_keys().irange(doc_key, end, inclusive=(True, False)):
            reg = registers[key]
            if isinstance(reg, tuple):
                source, version = reg[0], reg[2]
            else:
                source, version = reg.source, reg.version
            sources[source] = sources.get(source, 0) + 1
            if version > top:
                top = version
        if not sources:
            return None
        doc = docs[doc_key] = _Doc()
        doc.counter = self._lazy
        doc.sources = sources
        doc.max_version = top
        self._lazy_left -= 1
        return doc

    def _documents(self) -> int:
        """How many documents the view has, the unbuilt ones of a lazy load included
        (counted by ``stage_stored``, then kept up to date by ``_doc_for``)."""
        return len(self._docs) + (0 if self._lazy is None else self._lazy_left)

    def _build_all(self) -> None:
        """Build every document a lazy load left unbuilt (something needs them all)."""
        if self._lazy is None:
            return
        slicer = itemgetter(slice(0, self.document_depth))
        for doc_key in dict.fromkeys(map(slicer, self._index_keys())):
            if doc_key not in self._docs:
                self._doc_for(doc_key)
        self._lazy, self._lazy_left = None, 0

    def _changed(self, doc_key: Key) -> None:
        self._seq += 1
        doc = self._doc_for(doc_key)
        if doc is not None:
            doc.counter = self._seq
            doc.etag = None
        self._history.append((self._seq, doc_key))
        self._notify([doc_key])

    def _changed_below(self, key: Key) -> None:
        """A register shallower than a document changed: every document beneath it did.

        ``Replica.submit`` refuses such keys; a log written before it did may hold them.
        The documents change in key order (not the order the view met them: a lazy load
        builds its documents in another order than an eager one)."""
        n = len(key)
        self._build_all()
        for doc_key in sorted(d for d in self._docs if d[:n] == key and d != key):
            self._changed(doc_key)

    def compact(self, horizons: Horizons) -> int:
        """Drop tombstones below their horizon whose loss changes no document; returns
        how many were dropped (compaction).

        A tombstone stays while a live register it overrides is still held: an older live
        ancestor (it hides part of that value) or an older live register beneath it (it
        hides that register). Otherwise nothing it overrode is held any more, and what it
        overrode can only come back as a late event below the floor that dropping it
        raises. Only live registers decide, so dropping any set of such tombstones together
        changes nothing either. The floors and version marks go into ``compaction_state``.
        """
        index = self._index_keys()
        registers = self._registers
        dead: list[Event] = []
        for key in index:
            reg = registers[key]
            if not (reg[3] if isinstance(reg, tuple) else reg.deleted):
                continue
            event = self._event(key)
            horizon = horizons.horizon_for(event.source, event.version)
            if horizon is None or event.version >= horizon or self._overrides_live(event):
                continue
            dead.append(event)
        touched: dict[Key, None] = {}
        depth = self.document_depth
        marks = self._marks
        if self._lazy is not None:
            for event in dead:  # counted from their registers before any is dropped
                self._doc_for(event.key[:depth])
        for event in dead:
            key = event.key
            del registers[key]
            index.remove(key)
            if is_hlc(event.version):
                self._hlc_floor = max(self._hlc_floor, event.version + 1)
            else:
                self._floors[event.source] = max(self._floors.get(event.source, -1),
                                                 event.version + 1)
            for i in range(1, min(len(key), depth + 1) + 1):
                if marks.get(key[:i], -1) < event.version:
                    marks[key[:i]] = event.version
            doc_key = key[:depth]
            doc = self._docs[doc_key]
            _release(doc.sources, event.source)
            touched[doc_key] = None
        self._tombstones -= len(dead)
        # What a dropped tombstone hid is gone too, so no document's content changes; the
        # change is still announced (a fresh ETag computation, watchers re-check) because
        # the registers behind it did.
        for doc_key in touched:
            self._changed(doc_key)
        return len(dead)

    def forget_tombstones(self, horizon_version: int) -> int:
        """``compact(Horizons(hlc=horizon_version))``: kept for callers of 0.1."""
        return self.compact(Horizons(hlc=horizon_version))

    def _overrides_live(self, tomb: Event) -> bool:
        rank = (tomb.version, tomb.source, tomb.digest)
        key = tomb.key
        get = self._lookup
        for i in range(1, len(key)):
            above = get(key[:i])
            if above is not None and not above.deleted and (
                    above.version, above.source, above.digest) < rank:
                return True
        end = (*key[:-1], key[-1] + "\x00")
        for below_key in self._index.irange(key, end, inclusive=(False, False)):
            below = self._event(below_key)
            if not below.deleted and (below.version, below.source, below.digest) < rank:
                return True
        return False

    def compaction_state(self) -> CompactionState:
        """What compaction left (floors, version marks) and the change number: persisted
        with the compacted registers, given back to ``restore`` after a restart."""
        return CompactionState(self._hlc_floor, dict(self._floors), dict(self._marks),
                               self._seq)

    def restore(self, state: CompactionState) -> None:
        """Take back a persisted ``compaction_state``, after ``load``ing the registers
        persisted with it (they are held, so its floors do not apply to them): later
        events below its floors for keys not held are no-ops, ``max_version`` keeps its
        marks, and change numbers continue above the persisted one."""
        self._hlc_floor = max(self._hlc_floor, state.hlc_floor)
        for source, floor in state.floors.items():
            self._floors[source] = max(self._floors.get(source, -1), floor)
        for prefix, version in state.marks.items():
            if self._marks.get(prefix, -1) < version:
                self._marks[prefix] = version
            if len(prefix) == self.document_depth:
                doc = self._doc_for(prefix)
                if doc is None:
                    doc = self._docs[prefix] = _Doc()
                    doc.counter = self._seq
                doc.max_version = max(doc.max_version, version)
        self.resume_changes(state.change_seq)

    def resume_changes(self, at_least: int) -> None:
        """Continue change numbers from ``at_least`` (after a restart: never backwards).

        Every document's counter moves up to it; the change history is forgotten, so
        ``changed_since`` of an older number answers None (rescan)."""
        if at_least <= self._seq:
            return
        self._seq = at_least
        self._history.clear()
        if self._lazy is not None:
            self._lazy = at_least
        for doc in self._docs.values():
            doc.counter = at_least

    # -- reading ---------------------------------------------------------------------------
    def get(self, key: Key) -> Event | None:
        """The winning event of a register (a tombstone included), or None."""
        return self._lookup(tuple(key))

    def _lookup(self, key: Key) -> Event | None:
        reg = self._registers.get(key)
        if isinstance(reg, tuple):
            reg = self._registers[key] = stored_event(reg)
        return reg

    def _event(self, key: Key) -> Event:
        """The register of a key the view holds, built into an ``Event`` (and kept so)."""
        reg = self._registers[key]
        if isinstance(reg, tuple):
            reg = self._registers[key] = stored_event(reg)
        return reg

    def registers(self, prefix: Key = ()) -> Iterator[Event]:
        """Winning events whose key starts with ``prefix``, in key order."""
        prefix = tuple(prefix)
        registers = self._registers
        index = self._index_keys()
        if not prefix:
            keys: Iterable[Key] = index
        else:
            # Every key under the prefix sorts below the prefix with its last part followed
            # by "\x00" (the smallest character), and every key not under it above: the
            # subtree is exactly this range.
            end = (*prefix[:-1], prefix[-1] + "\x00")
            keys = index.irange(prefix, end, inclusive=(True, False))
        for key in keys:
            reg = registers[key]
            if isinstance(reg, tuple):
                reg = registers[key] = stored_event(reg)
            yield reg

    def _index_keys(self) -> SortedList:
        """The sorted index, brought up to date with the keys added since the last read.

        ``SortedList.update`` sorts the new keys once and then either merges them (few) or
        rebuilds from one sort of mostly sorted runs (many): either way far cheaper than a
        bisect-insert per new key on the write path, which was over half of applying a
        fresh key. A key is never removed between two reads without passing through here
        first (``compact`` syncs before it pops), so index and dict agree.
        """
        if self._unindexed:
            self._index.update(self._unindexed)
            # Cleared, not replaced: an ``apply_batch`` whose listener reads the view holds
            # this very list and goes on appending to it.
            self._unindexed.clear()
        return self._index

    def __len__(self) -> int:
        return len(self._registers)

    def newest_versions(self) -> dict[str, int]:
        """The greatest version per source among the registers (tombstones included):
        ``_liveliness.newest_versions(self.registers())``, without building the Events of
        registers recovery loaded (``open_replica`` asks this of every recovered view)."""
        newest: dict[str, int] = {}
        get = newest.get
        for reg in self._registers.values():
            if isinstance(reg, tuple):
                source, version = reg[0], reg[2]
            else:
                source, version = reg.source, reg.version
            if version > get(source, -1):
                newest[source] = version
        return newest

    def max_version(self, prefix: Key) -> int:
        """The greatest version of any event applied under ``prefix`` (the prefix itself
        included), tombstones and registers compaction dropped included; -1 if none.

        Exact for prefixes of at most ``document_depth + 1`` parts (compaction keeps
        marks that deep); deeper, a dropped tombstone's version may be missing."""
        prefix = tuple(prefix)
        best = self._marks.get(prefix, -1)
        for event in self.registers(prefix):
            if event.version > best:
                best = event.version
        return best

    def document(self, prefix: Key) -> Any:
        """The JSON value under ``prefix``, or None when nothing live is there.

        A register takes part only if no ancestor register (a shallower key on its path,
        live or tombstone) has a greater order key (``_merge.order_key``): a write of a
        whole subtree replaces every older register beneath it, and a tombstone deletes
        every older register beneath it (a tombstone orders below every value of its
        version and source, so it takes no part under a parent value of its version).
        Each register taking part places its value at its path (over its ancestors'
        values: it is newer than all of them); a tombstone taking part removes its path
        (a removed list element leaves the list, later elements moving up). A path part
        addresses a list element only when it is a canonical
        decimal index within that list (``"0"``, ``"12"``, as in JSON Pointer); a register
        whose path runs through a list by anything else places nothing (a list never
        changes shape), and one whose path runs through a scalar replaces it with an
        object. The document is a pure function of the register set.
        Asking inside a register's value is the same as walking the document above:
        ``document(p + (k,))`` equals ``document(p)[k]``. The result is a fresh object the
        caller owns.
        """
        prefix = tuple(prefix)
        # Build from the shallowest register above the prefix, if any, then walk down: a
        # sibling register below that one (a list-element tombstone, an object replacing a
        # list) can change what the prefix's path holds, so reading only the nearest
        # ancestor's stored value would disagree with the document above.
        base = prefix
        get = self._registers.get
        for depth in range(1, len(prefix)):
            if get(prefix[:depth]) is not None:
                base = prefix[:depth]
                break
        root = self._build(base)
        if base is not prefix and root is not _MISSING:
            root = _walk(root, prefix[len(base):])
        return None if root is _MISSING else root

    def _build(self, base: Key) -> Any:
        n = len(base)
        root: Any = _MISSING
        holes = _Holes()
        # Key order puts every register after its ancestors, so one pass with a stack of
        # the registers on the current path (each with the greatest order key at or above
        # it) decides who takes part. Registers taking part are applied in that same key
        # order: an ancestor before its descendants (which are newer than it), and
        # registers on disjoint paths commute (list indexes name the stored positions).
        stack: list[tuple[Key, int, tuple[int, str, bytes]]] = []  # (key, len, max rank)
        push, pop = stack.append, stack.pop
        decode = _codec.decode
        for event in self.registers(base):
            key = event.key
            rank = (event.version, event.source, event.digest)
            hidden = False
            while stack:
                top_key, top_len, top_rank = stack[-1]
                if key[:top_len] == top_key:
                    if top_rank > rank:
                        hidden, rank = True, top_rank
                    break
                pop()
            push((key, len(key), rank))
            if hidden:
                continue  # an ancestor is newer
            rel = key[n:]
            if event.deleted:
                root = _delete(root, rel, holes)
            else:
                root = _place(root, rel, decode(event.encoded))
        if holes.made:
            root = _compact(root)
        return root

    def digest(self) -> bytes:
        """Stable 32-byte hash of every register (key, version, source, tombstone, value)."""
        h = hashlib.blake2b(digest_size=32)
        registers = self._registers
        for key in self._index_keys():
            reg = registers[key]
            if isinstance(reg, tuple):  # the same fields, read without building the Event
                source, _, version, deleted, encoded, _ = reg
            else:
                source, version, deleted, encoded = (reg.source, reg.version, reg.deleted,
                                                     reg.encoded)
            record = msgpack.packb([list(key), version, source, deleted, encoded],
                                   use_bin_type=True)
            h.update(len(record).to_bytes(4, "big"))
            h.update(record)
        return h.digest()

    def content_digest(self) -> bytes:
        """Stable 32-byte hash of every live register (key, version, source, value).

        Unlike ``digest`` it leaves tombstones out: compaction drops some, so a compacted
        replica and one that did not compact, having seen the same events, agree on this
        digest (and on every document), not on ``digest``."""
        h = hashlib.blake2b(digest_size=32)
        registers = self._registers
        for key in self._index_keys():
            reg = registers[key]
            if isinstance(reg, tuple):
                source, _, version, deleted, encoded, _ = reg
            else:
                source, version, deleted, encoded = (reg.source, reg.version, reg.deleted,
                                                     reg.encoded)
            if deleted:
                continue
            record = msgpack.packb([list(key), version, source, encoded],
                                   use_bin_type=True)
            h.update(len(record).to_bytes(4, "big"))
            h.update(record)
        return h.digest()

    # -- change tracking -------------------------------------------------------------------
    def document_key(self, key: Key) -> Key:
        return tuple(key)[: self.document_depth]

    def document_info(self, doc_key: Key) -> DocumentInfo | None:
        doc = self._doc_for(tuple(doc_key))
        if doc is None:
            return None
        if doc.etag is None:
            body = _canonical(self.document(doc_key))
            doc.etag = _codec.digest(_codec.encode(body)).hex()
        return DocumentInfo(tuple(doc_key), doc.counter, doc.etag, frozenset(doc.sources),
                            max(doc.max_version, self._marks.get(tuple(doc_key), -1)))

    @property
    def change_seq(self) -> int:
        """Increases by one with every change of any register."""
        return self._seq

    def changed_since(self, seq: int) -> frozenset[Key] | None:
        """Documents changed after change ``seq``; None if that is older than remembered."""
        if seq >= self._seq:
            return frozenset()
        if not self._history or self._history[0][0] > seq + 1:
            return None
        # Change numbers are consecutive, so the changes after ``seq`` are exactly the last
        # ``_seq - seq`` entries: no scan of the older history.
        return frozenset(doc for _, doc in islice(reversed(self._history), self._seq - seq))

    def subscribe(self, listener: Callable[[Key], None]) -> Callable[[], None]:
        """Call ``listener(document_key)`` synchronously on every change; returns unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def statistics(self) -> ViewStatistics:
        return ViewStatistics(
            registers=len(self._registers),
            tombstones=self._tombstones,
            documents=self._documents(),
            applies=self._applies,
            noop_applies=self._noops,
            change_seq=self._seq,
            floor_noops=self._floor_noops,
        )


def _below_floor(event: Event, hlc_floor: int, floors: dict[str, int]) -> bool:
    version = event.version
    if version >= HLC_SPACE_MIN:
        return version < hlc_floor
    return version < floors.get(event.source, -1)


def _wins_tie(new: Event, old: Event) -> bool:
    """Between events of equal version: source, then digest (a tombstone's is empty, so a
    value beats a tombstone of the same version and source), then the smaller delivery
    ``seq`` (none before any), so the register kept never depends on arrival order."""
    a, b = (new.source, new.digest), (old.source, old.digest)
    if a != b:
        return a > b
    return (-1 if new.seq is None else new.seq) < (-1 if old.seq is None else old.seq)


def _release(sources: dict[str, int], source: str) -> None:
    left = sources[source] - 1
    if left:
        sources[source] = left
    else:
        del sources[source]


class _Holes:
    """Set when a tombstone removed a list element: it leaves a hole until the end, so
    indexes of other registers still address the elements they named."""

    __slots__ = ("made",)

    def __init__(self) -> None:
        self.made = False


def _index(container: list[Any], part: str) -> int | None:
    """``part`` as an index into ``container``: canonical decimal (JSON Pointer), in range."""
    if not part.isascii() or not part.isdigit() or (part[0] == "0" and len(part) > 1):
        return None
    i = int(part)
    return i if i < len(container) else None


def _walk(value: Any, path: Key) -> Any:
    for part in path:
        if isinstance(value, dict):
            if part not in value:
                return _MISSING
            value = value[part]
        elif isinstance(value, list):
            i = _index(value, part)
            if i is None:
                return _MISSING
            value = value[i]
        else:
            return _MISSING
    return value


def _place(root: Any, path: Key, value: Any) -> Any:
    """``root`` with ``value`` placed at ``path``; containers on the way are reused when
    the path goes through them (an object member, a list index in range), a scalar on
    the way is replaced by an object, and a path into a list by anything but an index in
    range places nothing. Iterative, as this is most of the time of rendering a document."""
    holder = [root]
    container: Any = holder
    slot: Any = 0
    for part in path:
        cur = container.get(slot, _MISSING) if type(container) is dict else container[slot]
        if isinstance(cur, dict):
            container, slot = cur, part
            continue
        if isinstance(cur, list):
            i = _index(cur, part)
            if i is None:
                return holder[0]  # not a position inside this list: places nothing
            container, slot = cur, i
            continue
        fresh: dict[str, Any] = {}
        container[slot] = fresh
        container, slot = fresh, part
    container[slot] = value
    return holder[0]


def _delete(root: Any, path: Key, holes: _Holes) -> Any:
    if not path:
        return _MISSING
    head, rest = path[0], path[1:]
    if isinstance(root, dict):
        if head in root:
            child = _delete(root[head], rest, holes)
            if child is _MISSING:
                del root[head]
            else:
                root[head] = child
    elif isinstance(root, list):
        i = _index(root, head)
        if i is not None:
            child = _delete(root[i], rest, holes)
            if child is _MISSING:
                holes.made = True
            root[i] = child
    return root


def _compact(value: Any) -> Any:
    """Drop the holes tombstones left in lists (anywhere in ``value``)."""
    if isinstance(value, list):
        return [_compact(v) for v in value if v is not _MISSING]
    if isinstance(value, dict):
        for k, v in value.items():
            value[k] = _compact(v)
    return value


def _canonical(value: Any) -> Any:
    """``value`` with object keys sorted at every level, for a content hash that depends
    only on the document's content (not on the order its registers placed the keys)."""
    if isinstance(value, dict):
        return {k: _canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value
