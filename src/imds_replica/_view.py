"""The materialized view: one LWW register per key, and change tracking per document.

Registers live in a dict keyed by the key tuple, with a sorted index of the keys beside it
(brought up to date at the next ordered read), so a subtree (a VM's document, all caller
mappings) is a contiguous range. A *document* is the subtree a key belongs to: its
first ``document_depth`` parts (``("vms", VMID)``). Each document keeps a change counter, the
sources behind its registers, and a lazily computed content ETag, so the server learns what
changed (``subscribe``/``changed_since``) and how fresh it is without rescanning the view.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

import attrs
import msgpack
from sortedcontainers import SortedList

from . import _codec
from ._event import Event, Key

logger = logging.getLogger(__name__)

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


@attrs.frozen
class DocumentInfo:
    """What the server needs to cache, watch and date one document."""

    key: Key
    counter: int  # changes of this document since this view was created
    etag: str  # content hash: equal on every replica holding the same document
    sources: frozenset[str]  # sources owning the registers behind it
    max_version: int  # greatest version among its registers, tombstones included


class _Doc:
    __slots__ = ("counter", "etag", "max_version", "sources")

    def __init__(self) -> None:
        self.counter = 0
        #: source -> how many of this document's registers it owns (never zero).
        self.sources: dict[str, int] = {}
        self.etag: str | None = None
        self.max_version = -1


class View:
    """LWW registers with documents built on demand. Not thread-safe; never awaits."""

    def __init__(self, *, document_depth: int = 2) -> None:
        self.document_depth = document_depth
        #: key -> winning event. A plain dict: a write costs one hash, not a sorted insert.
        self._registers: dict[Key, Event] = {}
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

    # -- writing ---------------------------------------------------------------------------
    def apply(self, event: Event) -> bool:
        """Merge one event; True only if the register (and so the view) changed."""
        return self.apply_batch((event,))[0]

    def apply_batch(self, events: Iterable[Event]) -> tuple[bool, ...]:
        """Merge events in order; one flag per event: did it change the view.

        The hot path of every replica (each group commit of the log lands here), so the
        merge order is inlined (it is ``order_key`` of ``_merge``, compared version first:
        most events are decided by the version alone) and per-call lookups are hoisted out
        of the loop. A new key goes into the register dict only; the sorted index learns it
        at the next ordered read (see ``_index_keys``). Listeners are called once the whole
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
        flags: list[bool] = []
        flag = flags.append
        noops = 0
        for event in events:
            key = event.key
            old: Event | None = get(key)
            if old is None:
                unindexed.append(key)
            else:
                version, old_version = event.version, old.version
                if version < old_version or (version == old_version and (
                        event.source, event.digest) <= (old.source, old.digest)):
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
        self._applies += len(flags)
        self._noops += noops
        if changed and self._listeners:
            self._notify(changed)
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
        doc.counter += 1
        doc.etag = None
        return delta

    def _changed(self, doc_key: Key) -> None:
        doc = self._docs.get(doc_key)
        if doc is not None:
            doc.counter += 1
            doc.etag = None
        self._seq += 1
        self._history.append((self._seq, doc_key))
        self._notify([doc_key])

    def forget_tombstones(self, horizon_version: int) -> int:
        """Drop tombstones older than ``horizon_version`` (compaction); returns how many.

        After this, an older write of the same key that arrives late would reappear: the
        horizon must exceed the longest delivery delay of any source.
        """
        index = self._index_keys()
        dead = [k for k, e in self._registers.items() if e.deleted and e.version < horizon_version]
        touched: dict[Key, None] = {}
        for key in dead:
            event = self._registers.pop(key)
            index.remove(key)
            doc_key = key[: self.document_depth]
            doc = self._docs[doc_key]
            _release(doc.sources, event.source)
            if not doc.sources:
                del self._docs[doc_key]
            touched[doc_key] = None
        self._tombstones -= len(dead)
        # A tombstone may have hidden part of a shallower register's value, so dropping it
        # can change the document: count it as a change (fresh ETag, watchers woken).
        for doc_key in touched:
            self._changed(doc_key)
        return len(dead)

    # -- reading ---------------------------------------------------------------------------
    def get(self, key: Key) -> Event | None:
        """The winning event of a register (a tombstone included), or None."""
        return self._registers.get(tuple(key))

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
            yield registers[key]

    def _index_keys(self) -> SortedList:
        """The sorted index, brought up to date with the keys added since the last read.

        ``SortedList.update`` sorts the new keys once and then either merges them (few) or
        rebuilds from one sort of mostly sorted runs (many): either way far cheaper than a
        bisect-insert per new key on the write path, which was over half of applying a
        fresh key. A key is never removed between two reads without passing through here
        first (``forget_tombstones`` syncs before it pops), so index and dict agree.
        """
        if self._unindexed:
            self._index.update(self._unindexed)
            # Cleared, not replaced: an ``apply_batch`` whose listener reads the view holds
            # this very list and goes on appending to it.
            self._unindexed.clear()
        return self._index

    def __len__(self) -> int:
        return len(self._registers)

    def document(self, prefix: Key) -> Any:
        """The JSON value under ``prefix``, or None when nothing live is there.

        Each register places its value at its path below the prefix; a deeper register
        overrides a shallower one at its path; a tombstone removes its path (deeper live
        registers still place their values; a removed list element leaves the list, later
        elements moving up). A path part addresses a list element when it is a canonical
        decimal index within the list (``"0"``, ``"12"``, as in JSON Pointer); a register
        whose path runs through anything else that is not an object replaces it with one.
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
        # Shallow before deep (so deeper overrides), key order within a depth: the same
        # registers always give the same steps, whatever order they arrived in.
        regs = sorted(self.registers(base), key=lambda e: len(e.key))
        root: Any = _MISSING
        holes = _Holes()
        for event in regs:
            rel = event.key[n:]
            if event.deleted:
                root = _delete(root, rel, holes)
            else:
                root = _place(root, rel, _codec.decode(event.encoded))
        if holes.made:
            root = _compact(root)
        return root

    def digest(self) -> bytes:
        """Stable 32-byte hash of every register (key, version, source, tombstone, value)."""
        h = hashlib.blake2b(digest_size=32)
        registers = self._registers
        for key in self._index_keys():
            event = registers[key]
            record = msgpack.packb(
                [list(key), event.version, event.source, event.deleted, event.encoded],
                use_bin_type=True,
            )
            h.update(len(record).to_bytes(4, "big"))
            h.update(record)
        return h.digest()

    # -- change tracking -------------------------------------------------------------------
    def document_key(self, key: Key) -> Key:
        return tuple(key)[: self.document_depth]

    def document_info(self, doc_key: Key) -> DocumentInfo | None:
        doc = self._docs.get(tuple(doc_key))
        if doc is None:
            return None
        if doc.etag is None:
            body = _canonical(self.document(doc_key))
            doc.etag = _codec.digest(_codec.encode(body)).hex()
        return DocumentInfo(tuple(doc_key), doc.counter, doc.etag,
                            frozenset(doc.sources), doc.max_version)

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
            documents=len(self._docs),
            applies=self._applies,
            noop_applies=self._noops,
            change_seq=self._seq,
        )


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
    the path goes through them (an object member, a list index), else replaced by an
    object. Iterative, as this is most of the time of rendering a document."""
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
            if i is not None:
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
