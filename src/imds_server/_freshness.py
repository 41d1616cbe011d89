"""How fresh an answer is: ``Age`` and the per-source ``Imds-Freshness`` header.

``Age`` is the whole seconds since the data behind the answer was last confirmed by its
least fresh source. A source's age is ``now - last contact`` (after a restart, the contact
persisted with its data); a pushed source (``always_live``) is confirmed by construction,
so its age is 0; a source not heard from counts from the replica's start (we cannot vouch
for it earlier) — the same age and state ``/sources`` and ``/metrics`` report.

``Imds-Freshness`` lists every source behind the answer, least fresh first, as an RFC 8941
list: ``tags;state=stale;age=312, fabric;state=live;age=0``.
"""

from __future__ import annotations

from collections.abc import Iterable

from imds_replica import LivelinessTracker

HEADER = "Imds-Freshness"


def freshness(sources: Iterable[str], liveliness: LivelinessTracker, now: float,
              started: float) -> tuple[int, str]:
    """``(Age, Imds-Freshness value)`` for data owned by ``sources``."""
    rows: list[tuple[int, str, str]] = []
    for source in sources:
        status = liveliness.status(source, now)
        if status.policy.always_live and status.last_contact is not None:
            age = 0.0
        elif status.age is not None:
            age = status.age
        else:  # a tracker that does not know when the replica started
            age = now - started
        rows.append((max(0, int(age)), source, status.state.value))
    rows.sort(key=lambda r: (-r[0], r[1]))
    header = ", ".join(f"{name};state={state};age={age}" for age, name, state in rows)
    return (rows[0][0] if rows else 0), header
