"""The materialized view: one LWW register per key, and change tracking per document.

Registers live in a ``SortedDict`` keyed by the key tuple, so a subtree (a VM's document, all
caller mappings) is a contiguous range. A *document* is the subtree a key belongs to: its
first ``document_depth`` parts (``("vms", VMID)``). Each document keeps a change counter, the
sources behind its registers, and a lazily computed content ETag, so the server learns what
changed (``subscribe``/``changed_since``) and how fresh it is without rescanning the view.
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import msgpack
from sortedcontainers import SortedDict

from . import _codec
from ._event import Event, Key
from ._merge import supersedes

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
        self.sources: Counter[str] = Counter()
        self.etag: str | None = None
        self.max_version = -1


class View:
    """LWW registers with documents built on demand. Not thread-safe; never awaits."""

    def __init__(self, *, document_depth: int = 2) -> None:
        self.document_depth = document_depth
        self._registers: SortedDict = SortedDict()
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
        self._applies += 1
        key = event.key
        old: Event | None = self._registers.get(key)
        if not supersedes(event, old):
            self._noops += 1
            return False
        self._registers[key] = event
        doc_key = key[: self.document_depth]
        doc = self._docs.get(doc_key)
        if doc is None:
            doc = self._docs[doc_key] = _Doc()
        if old is not None:
            self._tombstones -= old.deleted
            doc.sources[old.source] -= 1
            if not doc.sources[old.source]:
                del doc.sources[old.source]
        self._tombstones += event.deleted
        doc.sources[event.source] += 1
        doc.counter += 1
        doc.etag = None
        if event.version > doc.max_version:
            doc.max_version = event.version
        self._seq += 1
        self._history.append((self._seq, doc_key))
        for listener in self._listeners:
            listener(doc_key)
        return True

    def forget_tombstones(self, horizon_version: int) -> int:
        """Drop tombstones older than ``horizon_version`` (compaction); returns how many.

        After this, an older write of the same key that arrives late would reappear: the
        horizon must exceed the longest delivery delay of any source.
        """
        dead = [k for k, e in self._registers.items() if e.deleted and e.version < horizon_version]
        for key in dead:
            event = self._registers.pop(key)
            doc = self._docs[key[: self.document_depth]]
            doc.sources[event.source] -= 1
            if not doc.sources[event.source]:
                del doc.sources[event.source]
            if not doc.sources:
                del self._docs[key[: self.document_depth]]
        self._tombstones -= len(dead)
        return len(dead)

    # -- reading ---------------------------------------------------------------------------
    def get(self, key: Key) -> Event | None:
        """The winning event of a register (a tombstone included), or None."""
        return self._registers.get(tuple(key))  # type: ignore[no-any-return]

    def registers(self, prefix: Key = ()) -> Iterator[Event]:
        """Winning events whose key starts with ``prefix``, in key order."""
        prefix = tuple(prefix)
        n = len(prefix)
        for key in self._registers.irange(minimum=prefix):
            if key[:n] != prefix:
                return
            yield self._registers[key]

    def __len__(self) -> int:
        return len(self._registers)

    def document(self, prefix: Key) -> Any:
        """The JSON value under ``prefix``, or None when nothing live is there.

        Each register places its value at its path below the prefix; a deeper register
        overrides a shallower one at its path; a tombstone removes its path (deeper live
        registers still place their values). The result is a fresh object the caller owns.
        """
        prefix = tuple(prefix)
        n = len(prefix)
        regs = sorted(self.registers(prefix), key=lambda e: len(e.key))
        # A register *above* the prefix may hold the data (asking inside a document value).
        for depth in range(n - 1, 0, -1):
            above = self._registers.get(prefix[:depth])
            if above is not None:
                regs.insert(0, above)
                break
        root = _MISSING
        for event in regs:
            rel = event.key[n:] if len(event.key) >= n else ()
            if len(event.key) < n:  # the value above: walk down to the prefix
                if event.deleted:
                    continue
                root = _walk(_codec.decode(event.encoded), prefix[len(event.key):])
                continue
            if event.deleted:
                root = _delete(root, rel)
            else:
                root = _place(root, rel, _codec.decode(event.encoded))
        return None if root is _MISSING else root

    def digest(self) -> bytes:
        """Stable 32-byte hash of every register (key, version, source, tombstone, value)."""
        h = hashlib.blake2b(digest_size=32)
        for key, event in self._registers.items():
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
            body = self.document(doc_key)
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
        return frozenset(doc for s, doc in reversed(self._history) if s > seq)

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


def _walk(value: Any, path: Key) -> Any:
    for part in path:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _place(root: Any, path: Key, value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(root, list) and head.isdigit() and int(head) < len(root):
        root[int(head)] = _place(root[int(head)], rest, value)
        return root
    if not isinstance(root, dict):
        root = {}
    root[head] = _place(root.get(head, _MISSING), rest, value)
    return root


def _delete(root: Any, path: Key) -> Any:
    if not path:
        return _MISSING
    head, rest = path[0], path[1:]
    if isinstance(root, dict) and head in root:
        child = _delete(root[head], rest)
        if child is _MISSING:
            del root[head]
        else:
            root[head] = child
    elif isinstance(root, list) and head.isdigit() and int(head) < len(root):
        child = _delete(root[int(head)], rest)
        if child is _MISSING:
            del root[int(head)]
        else:
            root[int(head)] = child
    return root
