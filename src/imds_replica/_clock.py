"""Hybrid logical clock for origins that have a wall clock.

A version is ``wall_ms << 16 | counter``: it orders like wall time, never goes backwards when
the wall clock steps back (the counter carries on from the largest time seen), and stays
ahead of any version observed from elsewhere. ``version_wall_ms`` recovers the time part,
which is how liveliness computes lag for HLC sources.

Observed versions are bounded by a maximum drift: a version whose time part is further
ahead of the local wall clock than ``max_drift_ms`` is counted (``beyond_drift``) and
observed only up to the bound. Without the bound one far-future version (an event posted
by hand, a host whose clock jumped a year) drags every later local version ahead of it,
and one at the end of the version space makes every ``now`` raise, on every restart.
"""

from __future__ import annotations

COUNTER_BITS = 16
_COUNTER_MAX = (1 << COUNTER_BITS) - 1
_MAX_VERSION = 2**63 - 1
#: How far ahead of the local wall clock an observed version may be (ms): NTP keeps hosts
#: within milliseconds; a minute leaves room for a badly synchronised one.
DEFAULT_MAX_DRIFT_MS = 60_000


def hlc_version(wall_ms: int, counter: int = 0) -> int:
    """Encode a wall time (ms since the epoch) and counter as a version."""
    if wall_ms < 0 or not 0 <= counter <= _COUNTER_MAX:
        raise ValueError("wall_ms must be >= 0 and counter in 0..65535")
    return (wall_ms << COUNTER_BITS) | counter


def version_wall_ms(version: int) -> int:
    """The wall-time part (ms since the epoch) of an HLC-encoded version."""
    return version >> COUNTER_BITS


class HybridClock:
    """Issues strictly increasing versions; ``now`` and ``observe`` take time explicitly.

    ``max_drift_ms`` bounds what ``observe`` accepts (``None``: unbounded, for callers that
    trust every version they observe).
    """

    __slots__ = ("_last", "beyond_drift", "furthest_refused", "max_drift_ms")

    def __init__(self, last: int = 0, *,
                 max_drift_ms: int | None = DEFAULT_MAX_DRIFT_MS) -> None:
        if max_drift_ms is not None and not max_drift_ms > 0:
            raise ValueError(f"max_drift_ms must be > 0 (or None), got {max_drift_ms!r}")
        #: The largest version issued or observed; restore it from the log after a restart.
        self._last = last
        self.max_drift_ms = max_drift_ms
        #: Observed versions beyond the drift bound, and the greatest of them (0: none).
        self.beyond_drift = 0
        self.furthest_refused = 0

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

    def observe(self, remote_version: int, wall_ms: int) -> bool:
        """Account for a version seen from elsewhere at local time ``wall_ms``, so later
        ``now`` calls exceed it. Returns False when it lies beyond the drift bound: it is
        then counted and observed only up to the bound."""
        bound = self.bound(wall_ms)
        within = bound is None or remote_version <= bound
        if not within:
            assert bound is not None
            self.beyond_drift += 1
            self.furthest_refused = max(self.furthest_refused, remote_version)
            remote_version = bound
        if remote_version > self._last:
            self._last = remote_version
        return within

    def bound(self, wall_ms: int) -> int | None:
        """The greatest version ``observe`` takes at local time ``wall_ms`` (None: any)."""
        if self.max_drift_ms is None:
            return None
        return min(hlc_version(max(wall_ms, 0) + self.max_drift_ms), _MAX_VERSION - 1)
