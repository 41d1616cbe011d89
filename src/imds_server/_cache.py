"""Pre-rendered answers per (VM, path, api-version, format), dropped on change.

The cache subscribes to the view's change tracking: any change of document
``("vms", VM)`` drops that VM's entries, so an entry is always what rendering now would
produce and a hit does no JSON encoding. Entries per VM are bounded (distinct paths are
the guest's choice); past the bound the VM's entries are dropped and rebuilt on demand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from imds_replica import View

CacheKey = tuple[str, str, str]  # (path, api-version, format)


@attrs.frozen(slots=True)
class Answer:
    """A rendered answer (200, or a deterministic 400/404) and the sources behind it."""

    status: int
    body: bytes
    content_type: str
    etag: str
    sources: tuple[str, ...]  # whose data is behind it (for freshness)


class AnswerCache:
    def __init__(self, view: View, *, max_per_vm: int = 64) -> None:
        self.max_per_vm = max_per_vm
        self.hits = 0
        self.misses = 0
        self.invalidations = 0
        self._vms: dict[str, dict[CacheKey, Answer]] = {}
        self._prepared: dict[str, dict[Any, Any]] = {}
        self._unsubscribe: Callable[[], None] = view.subscribe(self._changed)

    def _changed(self, doc_key: tuple[str, ...]) -> None:
        if len(doc_key) == 2 and doc_key[0] == "vms":
            self._prepared.pop(doc_key[1], None)
            if self._vms.pop(doc_key[1], None) is not None:
                self.invalidations += 1

    def prepared(self, vm: str) -> dict[Any, Any]:
        """A side table for what the API derives from this VM's answers (the responses it
        reuses), dropped with them: on a change of the VM's document, or at the bound."""
        table = self._prepared.get(vm)
        if table is None:
            table = self._prepared[vm] = {}
        return table

    def get(self, vm: str, key: CacheKey) -> Answer | None:
        entries = self._vms.get(vm)
        answer = entries.get(key) if entries is not None else None
        if answer is None:
            self.misses += 1
        else:
            self.hits += 1
        return answer

    def put(self, vm: str, key: CacheKey, answer: Answer) -> None:
        entries = self._vms.setdefault(vm, {})
        if len(entries) >= self.max_per_vm:
            entries.clear()
            self._prepared.pop(vm, None)
        entries[key] = answer

    def __len__(self) -> int:
        return sum(len(e) for e in self._vms.values())

    def close(self) -> None:
        self._unsubscribe()
