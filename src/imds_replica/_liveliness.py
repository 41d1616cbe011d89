"""Per-source liveliness: how fresh each source's data is expected to be, and is.

Theory of operation
-------------------
A source is in one of four states. ``UNKNOWN`` until it first makes contact after start;
``LIVE`` while its last successful contact is younger than its policy's ``stale_after``;
``STALE`` until ``expired_after``; ``EXPIRED`` beyond. Any successful contact returns it to
``LIVE``. A failed attempt (a poll that errored) is recorded but is not contact. Sources
whose policy is ``always_live`` (data pushed by the host agent, which must arrive before it
applies) are LIVE from their first contact on and never age.

A source that never makes contact ages from the replica's start (``started``): UNKNOWN
while that is younger than ``stale_after``, then STALE and EXPIRED like a source whose
last contact was the start — silence is not freshness. Without ``started`` (a tracker used
on its own) it stays UNKNOWN.

After a restart, ``recover`` restores what the log knows: each source's last contact as
persisted with its batches (``Checkpoint.contact``) and its newest version in the view. A
source whose data was replayed is tracked (listed by ``sources()``) and shows its real
state: LIVE-then-ageing from its persisted contact; pushed sources LIVE; an HLC source
without a persisted contact is dated by its newest version; others age from the start.

Every transition is a row of ``TRANSITIONS`` below, and ``_step`` is the one function that
consults it; the tracker feeds it inputs derived from explicit ``now`` values, never from a
clock of its own.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

import attrs

from ._clock import version_wall_ms
from ._errors import ConfigError
from ._event import Event


class SourceState(enum.Enum):
    UNKNOWN = "unknown"
    LIVE = "live"
    STALE = "stale"
    EXPIRED = "expired"


class Input(enum.Enum):
    CONTACT = "contact"  # a successful exchange with the source
    FRESH = "fresh"  # time passed; age below stale_after
    AGED_STALE = "aged-stale"  # time passed; age at or beyond stale_after
    AGED_EXPIRED = "aged-expired"  # time passed; age at or beyond expired_after


S, In = SourceState, Input
TRANSITIONS: Mapping[tuple[SourceState, Input], SourceState] = {
    (S.UNKNOWN, In.CONTACT): S.LIVE,
    (S.UNKNOWN, In.FRESH): S.UNKNOWN,
    # Only sources that never made contact are UNKNOWN; their age counts from the start.
    (S.UNKNOWN, In.AGED_STALE): S.STALE,
    (S.UNKNOWN, In.AGED_EXPIRED): S.EXPIRED,
    (S.LIVE, In.CONTACT): S.LIVE,
    (S.LIVE, In.FRESH): S.LIVE,
    (S.LIVE, In.AGED_STALE): S.STALE,
    (S.LIVE, In.AGED_EXPIRED): S.EXPIRED,
    (S.STALE, In.CONTACT): S.LIVE,
    (S.STALE, In.FRESH): S.LIVE,  # only reachable if the clock went backwards
    (S.STALE, In.AGED_STALE): S.STALE,
    (S.STALE, In.AGED_EXPIRED): S.EXPIRED,
    (S.EXPIRED, In.CONTACT): S.LIVE,
    (S.EXPIRED, In.FRESH): S.LIVE,
    (S.EXPIRED, In.AGED_STALE): S.STALE,
    (S.EXPIRED, In.AGED_EXPIRED): S.EXPIRED,
}
del S, In


def newest_versions(events: Iterable[Event]) -> dict[str, int]:
    """The greatest version per source among ``events`` (a recovered view's registers)."""
    newest: dict[str, int] = {}
    get = newest.get
    for event in events:
        if event.version > get(event.source, -1):
            newest[event.source] = event.version
    return newest


def _step(state: SourceState, event: Input) -> SourceState:
    return TRANSITIONS[(state, event)]


@attrs.frozen
class LivelinessPolicy:
    """How often a source is expected to speak, and when its data counts as old (seconds)."""

    interval: float = attrs.field(default=60.0)
    stale_after: float = attrs.field(default=180.0)
    expired_after: float = attrs.field(default=3600.0)
    #: Pushed sources whose data must arrive before it applies: live by construction.
    always_live: bool = False
    #: The source's versions are HLC-encoded, so their wall time gives the data's lag.
    hlc_versions: bool = False

    def __attrs_post_init__(self) -> None:
        if not 0 < self.interval <= self.stale_after <= self.expired_after:
            raise ConfigError(
                "need 0 < interval <= stale_after <= expired_after, got "
                f"{self.interval}, {self.stale_after}, {self.expired_after}",
                key="liveliness",
            )

    @classmethod
    def pushed(cls) -> LivelinessPolicy:
        """The policy of host-agent pushed data: always live."""
        return cls(interval=3600.0, stale_after=3600.0, expired_after=3600.0,
                   always_live=True)


@attrs.frozen
class SourceStatus:
    """One source's freshness at one ``now`` (all times in seconds on the caller's clock)."""

    source: str
    state: SourceState
    policy: LivelinessPolicy
    last_contact: float | None
    last_change: float | None
    last_attempt: float | None
    last_error: str | None
    consecutive_failures: int
    age: float | None  # now - last_contact (- started when never; None: unknown start)
    lag: float | None  # now - wall time of the newest applied version (HLC sources)
    newest_version: int | None

    def to_dict(self) -> dict[str, object]:
        return {
            "state": self.state.value, "last_contact": self.last_contact,
            "last_change": self.last_change, "last_attempt": self.last_attempt,
            "last_error": self.last_error, "consecutive_failures": self.consecutive_failures,
            "age_seconds": self.age, "lag_seconds": self.lag,
            "newest_version": self.newest_version,
            "policy": {"interval": self.policy.interval,
                       "stale_after": self.policy.stale_after,
                       "expired_after": self.policy.expired_after,
                       "always_live": self.policy.always_live},
        }


@attrs.define
class _Track:
    policy: LivelinessPolicy
    state: SourceState = SourceState.UNKNOWN
    last_contact: float | None = None
    last_change: float | None = None
    last_attempt: float | None = None
    last_error: str | None = None
    failures: int = 0
    newest_version: int | None = None


class LivelinessTracker:
    """Tracks every source's state; all methods take ``now`` (seconds) explicitly.

    ``started``: when the replica started (sources never heard from age from it).
    ``generation`` grows with every contact, failure, change and recovery: a cache of
    answers derived from the tracker (freshness headers) is valid while it stands still.
    """

    def __init__(self, policies: Mapping[str, LivelinessPolicy] | None = None, *,
                 default: LivelinessPolicy | None = None,
                 started: float | None = None) -> None:
        self._default = default or LivelinessPolicy()
        self._tracks: dict[str, _Track] = {}
        self.started = started
        self.generation = 0
        for name, policy in (policies or {}).items():
            self._tracks[name] = _Track(policy)

    def set_policy(self, source: str, policy: LivelinessPolicy) -> None:
        self._track(source).policy = policy

    def _track(self, source: str) -> _Track:
        track = self._tracks.get(source)
        if track is None:
            track = self._tracks[source] = _Track(self._default)
        return track

    def contact(self, source: str, now: float) -> None:
        """A successful exchange (data or an unchanged answer) with the source."""
        track = self._track(source)
        track.state = _step(track.state, Input.CONTACT)
        track.last_contact = track.last_attempt = now
        track.last_error = None
        track.failures = 0
        self.generation += 1

    def failure(self, source: str, now: float, error: str) -> None:
        """A failed attempt: recorded, but the data ages on."""
        track = self._track(source)
        track.last_attempt = now
        track.last_error = error
        track.failures += 1
        self.generation += 1

    def applied(self, source: str, now: float, version: int) -> None:
        """Data from ``source`` changed the view (implies contact)."""
        self.contact(source, now)
        track = self._tracks[source]
        track.last_change = now
        if track.newest_version is None or version > track.newest_version:
            track.newest_version = version

    def recover(self, *, newest: Mapping[str, int], contacts: Mapping[str, float]) -> None:
        """After a restart: ``newest`` version per source in the recovered view, and the
        last contact persisted per source. Never moves a contact back, nor past the start
        (a contact persisted by a clock that ran ahead cannot be fresher than now)."""
        for source in sorted(set(newest) | set(contacts)):
            track = self._track(source)
            version = newest.get(source)
            if version is not None and (track.newest_version is None
                                        or version > track.newest_version):
                track.newest_version = version
            contact = contacts.get(source)
            if contact is None and track.policy.hlc_versions and version is not None:
                # The data's own time: it was confirmed at least then.
                contact = version_wall_ms(version) / 1000.0
            if contact is None and track.policy.always_live and version is not None:
                contact = self.started
            if contact is None:
                continue
            if self.started is not None:
                contact = min(contact, self.started)
            if track.last_contact is None or contact > track.last_contact:
                track.last_contact = contact
                track.state = _step(track.state, Input.CONTACT)
        self.generation += 1

    def state(self, source: str, now: float) -> SourceState:
        return self.status(source, now).state

    def status(self, source: str, now: float) -> SourceStatus:
        # Asking about a source never heard of does not start tracking it: ``sources()``
        # lists only configured sources and those that made contact or failed.
        track = self._tracks.get(source) or _Track(self._default)
        policy = track.policy
        since = track.last_contact if track.last_contact is not None else self.started
        age = None if since is None else max(0.0, now - since)
        if policy.always_live or age is None:
            aged = Input.FRESH
        elif age >= policy.expired_after:
            aged = Input.AGED_EXPIRED
        elif age >= policy.stale_after:
            aged = Input.AGED_STALE
        else:
            aged = Input.FRESH
        # A source never heard from is never made LIVE by time (a clock stepping back).
        if track.last_contact is not None or aged is not Input.FRESH:
            track.state = _step(track.state, aged)
        lag = None
        if policy.hlc_versions and track.newest_version is not None:
            lag = max(0.0, now - version_wall_ms(track.newest_version) / 1000.0)
        return SourceStatus(
            source=source, state=track.state, policy=policy,
            last_contact=track.last_contact, last_change=track.last_change,
            last_attempt=track.last_attempt, last_error=track.last_error,
            consecutive_failures=track.failures, age=age, lag=lag,
            newest_version=track.newest_version,
        )

    def sources(self) -> Iterable[str]:
        return sorted(self._tracks)

    def snapshot(self, now: float) -> dict[str, SourceStatus]:
        return {name: self.status(name, now) for name in self.sources()}
