"""Hybrid logical clock for origins that have a wall clock.

A version is ``wall_ms << 16 | counter``: it orders like wall time, never goes backwards when
the wall clock steps back (the counter carries on from the largest time seen), and stays
ahead of any version observed from elsewhere. ``version_wall_ms`` recovers the time part,
which is how liveliness computes lag for HLC sources.
"""

from __future__ import annotations

COUNTER_BITS = 16
_COUNTER_MAX = (1 << COUNTER_BITS) - 1
_MAX_VERSION = 2**63 - 1


def hlc_version(wall_ms: int, counter: int = 0) -> int:
    """Encode a wall time (ms since the epoch) and counter as a version."""
    if wall_ms < 0 or not 0 <= counter <= _COUNTER_MAX:
        raise ValueError("wall_ms must be >= 0 and counter in 0..65535")
    return (wall_ms << COUNTER_BITS) | counter


def version_wall_ms(version: int) -> int:
    """The wall-time part (ms since the epoch) of an HLC-encoded version."""
    return version >> COUNTER_BITS


class HybridClock:
    """Issues strictly increasing versions; ``now`` and ``observe`` take time explicitly."""

    __slots__ = ("_last",)

    def __init__(self, last: int = 0) -> None:
        #: The largest version issued or observed; restore it from the log after a restart.
        self._last = last

    @property
    def last(self) -> int:
        return self._last

    def now(self, wall_ms: int) -> int:
        """A version greater than every one issued or observed, near ``wall_ms``."""
        candidate = hlc_version(max(wall_ms, 0))
        version = max(candidate, self._last + 1)
        if version > _MAX_VERSION:
            # Checked before storing: a failed call leaves the clock usable and in range.
            raise OverflowError("hybrid clock exhausted the version space")
        self._last = version
        return version

    def observe(self, remote_version: int) -> None:
        """Account for a version seen from elsewhere, so later ``now`` calls exceed it."""
        if remote_version > self._last:
            self._last = remote_version
