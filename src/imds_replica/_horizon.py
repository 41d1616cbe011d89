"""Compaction horizons and the floors they leave: when a tombstone may be forgotten.

A tombstone may be dropped only once no event it overrides can still arrive. How long that
is depends on the source, and versions of different sources live in different *version
spaces*: hybrid-clock stamps (``wall_ms << 16 | counter``, about 1e17 today) and plain
counters (small integers). One numeric horizon across both would drop every counter
source's tombstones at once, so a ``Horizons`` holds one horizon per space:

* ``hlc``: a hybrid-clock version (usually "now minus the retention", see ``Horizons.age``);
  it applies to tombstones whose version is a hybrid-clock stamp, whatever their source.
* ``sources``: explicit horizons for named sources, in that source's own version space.
  A counter-versioned tombstone is dropped only when its source is named here.

What compaction dropped leaves a *floor* (``CompactionState``): an event below the floor of
its version space, for a key the view does not hold, is a late redelivery of something a
dropped tombstone had overridden, and is a counted no-op instead of a resurrection.
Hybrid-clock sources share one floor, because a tombstone of one source overrides older
writes of every other; a counter source has its own. The assumption is Cassandra's for
``gc_grace``: an event older than the horizon that the replica never saw is never delivered
(a replica offline for longer than the horizon is rebuilt from its sources, not merged).
"""

from __future__ import annotations

import operator
from collections.abc import Container, Mapping, Sequence
from typing import Any

import attrs

from ._clock import hlc_version
from ._errors import ValidationError
from ._event import Key

#: The smallest version taken as a hybrid-clock stamp: the stamp of 2000-01-01T00:00Z.
#: Counter sources stay far below it (it is about 6.2e16); every HLC version issued by a
#: clock reading a sane wall time is above it.
HLC_SPACE_MIN = hlc_version(946_684_800_000)
#: Version of the ``CompactionState`` encoding; readers ignore fields they do not know.
STATE_FORMAT = 1
#: The compaction state is persisted as the cursor of this pseudo-source: a CHECKPOINT
#: record after a compacted generation's registers (and in snapshots). ``#`` is not allowed
#: in source names, so no source's cursor can collide with it, and a reader that does not
#: know it (0.1.0) keeps it as the cursor of a source that never asks for it.
STATE_SOURCE = "#compaction"


_version = operator.itemgetter(2)


def is_hlc(version: int) -> bool:
    """True when ``version`` lies in the hybrid-clock version space."""
    return version >= HLC_SPACE_MIN


def _sources(value: Mapping[str, int]) -> Mapping[str, int]:
    return dict(value)


@attrs.frozen
class Horizons:
    """Per-version-space horizons for one compaction: tombstones strictly below the
    horizon of their space may be dropped (if dropping them changes no document)."""

    hlc: int | None = None
    sources: Mapping[str, int] = attrs.field(factory=dict, converter=_sources)

    @classmethod
    def age(cls, seconds: float, *, now: float,
            sources: Mapping[str, int] | None = None) -> Horizons:
        """Hybrid-clock tombstones older than ``seconds`` before ``now`` (Unix time)."""
        if seconds < 0:
            raise ValidationError(f"tombstone retention: {seconds} seconds is negative")
        wall_ms = max(int((now - seconds) * 1000), 0)
        return cls(hlc_version(wall_ms), sources or {})

    def horizon_for(self, source: str, version: int) -> int | None:
        """The horizon that applies to a tombstone of ``source`` at ``version``, if any."""
        explicit = self.sources.get(source)
        if explicit is not None:
            return explicit
        return self.hlc if is_hlc(version) else None


def as_horizons(value: int | Horizons | None) -> Horizons | None:
    """What ``FileLog(tombstone_horizon=...)`` returns, as ``Horizons``: a bare int is the
    hybrid-clock horizon (counter-versioned tombstones are then never dropped)."""
    if value is None or isinstance(value, Horizons):
        return value
    return Horizons(hlc=value)


@attrs.frozen
class CompactionState:
    """What compaction leaves behind besides the registers, persisted with them.

    * ``hlc_floor``: one more than the greatest hybrid-clock tombstone dropped (-1: none).
    * ``floors``: per counter source, one more than its greatest tombstone dropped.
    * ``marks``: per key prefix (at most ``document_depth + 1`` parts), the greatest version
      of a dropped register beneath it, so ``max_version`` never goes backwards.
    * ``change_seq``: the view's change number when it was compacted (a lower bound for the
      change numbers after a restart).
    """

    hlc_floor: int = -1
    floors: Mapping[str, int] = attrs.field(factory=dict)
    marks: Mapping[Key, int] = attrs.field(factory=dict)
    change_seq: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "hlc_floor": self.hlc_floor,
                "floors": dict(sorted(self.floors.items())),
                "marks": [[list(k), v] for k, v in sorted(self.marks.items())],
                "change_seq": self.change_seq}

    def below_floor(self, source: str, version: int) -> bool:
        """True when an event of ``source`` at ``version`` is under its space's floor."""
        if is_hlc(version):
            return version < self.hlc_floor
        return version < self.floors.get(source, -1)

    def admit(self, events: Sequence[Any], held: Container[Any]) -> Sequence[Any]:
        """Stored event tuples (``source, key, version, ...``) in log order, without
        those a view holding ``held`` keys would ignore: below the floor, key not held
        (nor folded earlier in ``events``)."""
        if not events or (self.hlc_floor < 0 and not self.floors):
            return events
        # The usual batch after a compaction: hybrid-clock versions above the floor. One
        # pass in C says so, and replay keeps its fast path.
        low = min(map(_version, events))
        if low >= HLC_SPACE_MIN and low >= self.hlc_floor:
            return events
        out = []
        seen: set[Any] = set()
        for t in events:
            key = tuple(t[1])
            if key not in held and key not in seen and self.below_floor(t[0], t[2]):
                continue
            seen.add(key)
            out.append(t)
        return out

    @classmethod
    def from_json(cls, data: Any) -> CompactionState:
        """Inverse of ``to_json``; fields it does not know are ignored (a later release
        may add some), a malformed one raises ``ValueError``."""
        if not isinstance(data, dict):
            raise ValueError(f"compaction state: {type(data).__name__}, not an object")
        try:
            hlc_floor = int(data.get("hlc_floor", -1))
            floors = {str(s): int(v) for s, v in dict(data.get("floors", {})).items()}
            marks = {tuple(str(p) for p in k): int(v) for k, v in data.get("marks", [])}
            change_seq = int(data.get("change_seq", 0))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"compaction state is malformed: {exc}") from None
        return cls(hlc_floor, floors, marks, change_seq)
