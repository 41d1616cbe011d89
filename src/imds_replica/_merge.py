"""The last-writer-wins order: the whole of the merge semantics in one place.

Events on the same key are ordered by ``(version, source, digest)``; a tombstone's digest is
empty (``_event.TOMBSTONE_DIGEST``), below every value's, so at equal version and source a
value beats a tombstone. That is what lets a stream resync tombstone a register at
``held + 1`` (the least version that beats it) without hiding a later genuine write at that
version on the hosts that resynced before it was published (``_stream._cursor``). Because
this is a total order on
distinct events and the register keeps the maximum, merge is commutative, associative and
idempotent: the view depends only on the *set* of events received. Events equal in that
order differ at most in their delivery ``seq`` (the same write delivered twice); the one
with the smaller ``seq`` (no ``seq`` before any) is kept, so even the stored register does
not depend on arrival order.

``order_key`` is also what the document rule compares between a register and its ancestors
(see ``View.document``).
"""

from __future__ import annotations

from ._event import Event

OrderKey = tuple[int, str, bytes]


def order_key(event: Event) -> OrderKey:
    return (event.version, event.source, event.digest)


def _seq_rank(event: Event) -> int:
    return -1 if event.seq is None else event.seq


def supersedes(new: Event, old: Event | None) -> bool:
    """True when ``new`` wins over the register's current event ``old``."""
    if old is None:
        return True
    a, b = order_key(new), order_key(old)
    if a != b:
        return a > b
    return _seq_rank(new) < _seq_rank(old)


def merge(a: Event | None, b: Event | None) -> Event | None:
    """The winner of two events for one key (``None`` stands for no event)."""
    if a is None:
        return b
    if b is None:
        return a
    return b if supersedes(b, a) else a
