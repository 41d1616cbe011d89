"""The host-owned stream cursor and the recovery decisions of a stream source.

Theory of operation
-------------------
A host reads its source through two *lanes*, each a single-filter consumer: ``HOST``
(``imds.<cluster>.<host>.<source>.*``) and ``ALL`` (``imds.<cluster>._all.<source>.*``).
One consumer per filter because a single-filter consumer is created on the JetStream API
subject that names its filter, which NATS permissions can restrict to the host's own
subjects; a two-filter consumer's create subject carries no filter, so nothing could stop
a host from giving its own consumer another host's subjects (docs/fleet.md).

The host's log owns the position: the cursor ``(stream, identity, host_seq, all_seq)``
names the stream, the stream's identity (its creation time: a deleted and recreated stream
has a new one) and, per lane, the last stream sequence up to which that lane is applied,
and it travels as the ``Checkpoint`` of the batch that applied it, so it is never durable
ahead of its data. The lanes are independent (the two lanes' registers merge last writer
wins, in any order), except for a resync, which is joint. The consumers on the server are
disposable: the ``Follower`` asks for new ones whenever anything is off, each starting at
its lane's ``seq + 1``; nothing on the server needs to survive.

A follower is ``DETACHED`` (no consumers), ``FOLLOWING`` (reading from the cursor on) or
``RESYNCING`` (reading both lanes from sequence 1 and noting every key that reappears).
The shell keeps one fetch outstanding per lane and feeds the follower, one at a time,
inputs derived from what the server said:

- ``RESUME`` / ``RESET`` — the stream's state, read before every (re)creation of the
  consumers. ``RESET`` when there is no cursor, the identity or stream name differs, a lane
  lies beyond the stream's last sequence, messages after a lane that has applied anything
  are gone (``first_seq > seq + 1``: a purge, or older registers superseded, which a
  resync reads cheaply since the stream holds one message per register), or the stream is
  empty although a lane is not at 0 (purged). A lane at 0 that is not resyncing holds
  nothing (the resync that put it there tombstoned what did not reappear), so lost
  messages cannot matter to it. ``RESUME_RESYNC`` when a resync was under way in this
  process and is continued where it got to; after a restart the set of keys seen is gone,
  so a cursor still marked ``resync`` means ``RESET``.
- ``CREATED`` — a lane's consumer exists; its pending count (from the create answer) of
  0 is a ``CAUGHT_UP`` for that lane.
- ``BATCH`` — deliveries of one lane with consecutive consumer sequences, applied up to the
  last; ``GAP`` — a consumer sequence jumped (a delivery was lost): what came before the
  jump is applied and the consumers recreated at the cursor.
- ``CAUGHT_UP`` — nothing is pending on a lane (an idle fetch answered by heartbeats, or a
  batch whose last message reports no pending ones). Once *both* lanes have caught up
  during a resync (``LANE_DONE`` before that), the resync ends: this source's registers
  that did not reappear on either lane are tombstoned, in the same batch as the cursor that
  clears ``resync``. During a resync an idle fetch is only ``IDLE``: the last deliveries
  may have been lost (no later one would show the gap), and ending the resync then would
  tombstone what was lost, so the lane counts as caught up only once a ``CHECK`` of its
  consumer (asked at once, ``wants_check``) shows everything it delivered arrived.
- ``CHECK`` / ``STALE`` — the stream's state and a lane's consumer (delivered count and
  pending), read now and then while that lane is idle: ``STALE`` when it shows a new
  identity, an empty stream under a non-zero cursor (purged), a last sequence below the
  cursor, or a consumer that delivered more than arrived (the last deliveries were lost,
  so no later one shows the gap) — none of which a live consumer reports. A lane whose
  consumer has delivered everything and has nothing pending is applied up to the last
  sequence the stream had before the consumer was asked: its cursor moves there, so a lane
  that rarely changes does not fall behind ``first_seq`` and resync for nothing.
- ``SILENCE`` (a fetch that no heartbeat answered: consumer deleted, server restarted,
  leadership moved) and ``LOST`` (an error, a disconnect): recreate.

The resync's tombstones are the one event a host makes up, and they are not a pure
function of the stream: a register is tombstoned at ``held.version + 1`` (the least version
that beats it). A write published after the resync at exactly ``held.version + 1`` (the
next value of a counter-versioned source) must still show on that host, as it does on a
host that resynced after it was published or never held the key. It does because a
tombstone's digest is empty (``_event.TOMBSTONE_DIGEST``): at equal version and source a
value beats a tombstone, on the register and in the document rule alike (a tombstone at
``held + 1`` hides no write of that version above or below it). Until session 5 the
tombstone's digest was that of a fixed marker, and such a write whose digest ordered below
it was lost on the host that resynced first
(``test_a_write_at_the_resync_tombstones_version_wins_on_every_host``). A genuine
tombstone published at ``held + 1`` ties with the resync's exactly (same order key); the
resync's carries ``seq = RESYNC_SEQ``, above every stream sequence, so the tie-break on the
smaller ``seq`` keeps the published one, the register every other host holds. What stays
outside the fix: a write of *another* source at exactly ``held + 1`` is still ordered by
source name against the tombstone (docs/fleet.md, the resync caveat).

Every transition is a row of ``TRANSITIONS``; ``Follower._step`` is the one function that
consults it. Messages that break the wire contract are refused — counted, reported with
their stream sequence, never applied — and the lane's cursor moves past them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from .._event import MAX_VERSION, Event, Key
from ._wire import WireError, lane_decoder

#: The delivery ``seq`` of a resync's tombstones: above every stream sequence, so a
#: published tombstone of the same key and version (an equal order key) is the one kept.
RESYNC_SEQ = MAX_VERSION


class Lane(enum.Enum):
    HOST = "host"  # imds.<cluster>.<host>.<source>.*
    ALL = "all"  # imds.<cluster>._all.<source>.*


LANES = (Lane.HOST, Lane.ALL)


class Phase(enum.Enum):
    DETACHED = "detached"
    FOLLOWING = "following"
    RESYNCING = "resyncing"


class Input(enum.Enum):
    RESUME = "resume"
    RESUME_RESYNC = "resume-resync"
    RESET = "reset"
    BATCH = "batch"
    GAP = "gap"
    LANE_DONE = "lane-done"  # one lane caught up during a resync, the other not yet
    CAUGHT_UP = "caught-up"
    IDLE = "idle"  # an idle fetch during a resync: caught up once a check confirms it
    CHECK = "check"
    STALE = "stale"
    SILENCE = "silence"
    LOST = "lost"


class Action(enum.Enum):
    CREATE = "create"  # consumers starting at each lane's seq + 1
    FETCH = "fetch"  # the lane's next fetch
    FINISH_RESYNC = "finish-resync"  # tombstone what did not reappear, then fetch
    RECREATE = "recreate"  # read the stream's state again, then CREATE


P, In, A = Phase, Input, Action
TRANSITIONS: Mapping[tuple[Phase, Input], tuple[Phase, Action]] = {
    (P.DETACHED, In.RESUME): (P.FOLLOWING, A.CREATE),
    (P.DETACHED, In.RESUME_RESYNC): (P.RESYNCING, A.CREATE),
    (P.DETACHED, In.RESET): (P.RESYNCING, A.CREATE),
    (P.FOLLOWING, In.BATCH): (P.FOLLOWING, A.FETCH),
    (P.FOLLOWING, In.CAUGHT_UP): (P.FOLLOWING, A.FETCH),
    (P.FOLLOWING, In.GAP): (P.DETACHED, A.RECREATE),
    (P.FOLLOWING, In.CHECK): (P.FOLLOWING, A.FETCH),
    (P.FOLLOWING, In.STALE): (P.DETACHED, A.RECREATE),
    (P.RESYNCING, In.CHECK): (P.RESYNCING, A.FETCH),
    (P.RESYNCING, In.STALE): (P.DETACHED, A.RECREATE),
    (P.FOLLOWING, In.SILENCE): (P.DETACHED, A.RECREATE),
    (P.FOLLOWING, In.LOST): (P.DETACHED, A.RECREATE),
    (P.RESYNCING, In.BATCH): (P.RESYNCING, A.FETCH),
    (P.RESYNCING, In.LANE_DONE): (P.RESYNCING, A.FETCH),
    (P.RESYNCING, In.IDLE): (P.RESYNCING, A.FETCH),
    (P.RESYNCING, In.CAUGHT_UP): (P.FOLLOWING, A.FINISH_RESYNC),
    (P.RESYNCING, In.GAP): (P.DETACHED, A.RECREATE),
    (P.RESYNCING, In.SILENCE): (P.DETACHED, A.RECREATE),
    (P.RESYNCING, In.LOST): (P.DETACHED, A.RECREATE),
    (P.DETACHED, In.LOST): (P.DETACHED, A.RECREATE),
    (P.DETACHED, In.SILENCE): (P.DETACHED, A.RECREATE),
}
del P, In, A


def worth_submitting(events: Iterable[Event],
                     held: Callable[[Key], Event | None]) -> list[Event]:
    """The events of a ``Step`` the shell submits: not those the view already holds
    exactly (``held(key)``; a resync re-reads everything, and costs reading, not log
    growth), except over a resync's own tombstone: a tombstone published at its version
    equals it but for the seq, and its smaller seq must replace ``RESYNC_SEQ`` (the
    register a host that resynced after the publish holds)."""
    out = []
    for event in events:
        current = held(event.key)
        if current != event or (current is not None and current.seq == RESYNC_SEQ
                                and event.seq != RESYNC_SEQ):
            out.append(event)
    return out


class ProtocolError(RuntimeError):
    """The shell fed the follower an input its state does not take (our bug)."""


@attrs.frozen
class Cursor:
    """The position a host resumes from: per lane, the stream sequence up to which it is
    applied; ``resync``: a full resync was under way."""

    stream: str
    identity: str
    host_seq: int
    all_seq: int
    resync: bool = False

    @property
    def seq(self) -> int:
        """The highest stream sequence applied on either lane."""
        return max(self.host_seq, self.all_seq)

    def lane(self, lane: Lane) -> int:
        return self.host_seq if lane is Lane.HOST else self.all_seq

    def moved(self, lane: Lane, seq: int) -> Cursor:
        if lane is Lane.HOST:
            return attrs.evolve(self, host_seq=seq)
        return attrs.evolve(self, all_seq=seq)

    def to_wire(self) -> dict[str, Any]:
        return {"stream": self.stream, "identity": self.identity, "seq": self.host_seq,
                "all_seq": self.all_seq, "resync": self.resync}

    @classmethod
    def from_wire(cls, data: object) -> Cursor | None:
        """The cursor persisted in a checkpoint; None for anything else (then: resync).

        A cursor without ``all_seq`` was written by the single two-filter consumer of
        0.2.0's first cut: it had applied both lanes up to ``seq``."""
        if not isinstance(data, Mapping):
            return None
        stream, identity, seq = data.get("stream"), data.get("identity"), data.get("seq")
        all_seq = data.get("all_seq", seq)
        resync = data.get("resync", False)
        if not (isinstance(stream, str) and isinstance(identity, str)
                and type(seq) is int and seq >= 0 and type(all_seq) is int and all_seq >= 0
                and type(resync) is bool):
            return None
        return cls(stream, identity, seq, all_seq, resync)


@attrs.frozen
class StreamState:
    """What stream info says: identity (creation time) and the sequences it holds."""

    name: str
    identity: str
    first_seq: int
    last_seq: int
    messages: int


@attrs.frozen
class ConsumerState:
    """What consumer info says: deliveries made (its consumer sequence) and still pending."""

    delivered: int
    pending: int


@attrs.frozen
class Delivery:
    """One delivered message with the sequences its metadata carries."""

    subject: str
    payload: bytes
    stream_seq: int
    consumer_seq: int
    pending: int  # messages still pending for this consumer after this one


@attrs.frozen
class Refusal:
    stream_seq: int
    subject: str
    reason: str


@attrs.frozen
class Step:
    """What the shell does next: submit ``events`` with ``cursor`` (when either is set),
    then ``action`` (FETCH: on the lane whose input this answers)."""

    action: Action
    events: tuple[Event, ...] = ()
    cursor: Cursor | None = None  # the cursor to persist with ``events`` (None: unchanged)
    refused: tuple[Refusal, ...] = ()
    tombstoned: int = 0
    #: For CREATE: each lane's consumer's first stream sequence.
    start: Mapping[Lane, int] = attrs.field(factory=dict)


class _LaneState:
    __slots__ = ("caught_up", "consumer_seq", "pending", "unconfirmed")

    def __init__(self) -> None:
        self.consumer_seq = 0  # the consumer's sequence of the last delivery that arrived
        self.pending: int | None = None
        self.caught_up = False  # during a resync: nothing was pending at some point
        self.unconfirmed = False  # during a resync: idle, not yet confirmed by a check


class Follower:
    """The sans-I/O cursor of one stream source (see the module docstring).

    ``held()`` returns this source's live (not deleted) registers in the replica's view; it
    is consulted only when a resync ends.
    """

    def __init__(self, *, stream: str, cluster: str, host: str, source: str,
                 cursor: Cursor | None, held: Callable[[], Iterable[Event]]) -> None:
        self.stream = stream
        self.cluster = cluster
        self.host = host
        self.source = source
        self.cursor = cursor
        self.phase = Phase.DETACHED
        self._held = held
        self._seen: set[Key] | None = None  # keys seen by the resync under way, if any
        self._lanes = {lane: _LaneState() for lane in LANES}
        self._decoders = {Lane.HOST: lane_decoder(cluster, host, source),
                          Lane.ALL: lane_decoder(cluster, None, source)}
        self.resyncs = 0
        self.recreations = 0
        self.gaps = 0
        self.refused = 0
        self.delivered = 0  # messages delivered (redeliveries included)
        self.tombstoned = 0  # registers a resync's end tombstoned

    @property
    def pending(self) -> int | None:
        """Messages the consumers still hold for this host (the lag), when known."""
        known = [s.pending for s in self._lanes.values() if s.pending is not None]
        return sum(known) if known else None

    def _step(self, event: Input) -> Action:
        try:
            self.phase, action = TRANSITIONS[(self.phase, event)]
        except KeyError:
            raise ProtocolError(f"{event.value} while {self.phase.value}") from None
        if action is Action.RECREATE:
            self.recreations += 1
        return action

    # -- inputs ----------------------------------------------------------------------------
    def on_stream(self, state: StreamState) -> Step:
        """The stream's state, read before creating the consumers: where to start them."""
        cursor = self.cursor
        continuing = (cursor is not None and cursor.resync and self._seen is not None)
        if (cursor is None or cursor.stream != state.name or cursor.identity != state.identity
                or cursor.seq > state.last_seq
                or any(0 < cursor.lane(lane) < state.first_seq - 1 for lane in LANES)
                or (state.messages == 0 and cursor.seq > 0)
                or (cursor.resync and not continuing)):
            self._step(Input.RESET)
            self.resyncs += 1
            self._seen = set()
            self.cursor = Cursor(state.name, state.identity, 0, 0, resync=True)
        else:
            self._step(Input.RESUME_RESYNC if continuing else Input.RESUME)
        assert self.cursor is not None
        self._lanes = {lane: _LaneState() for lane in LANES}
        return Step(Action.CREATE, start={lane: self.cursor.lane(lane) + 1 for lane in LANES})

    def on_created(self, lane: Lane, pending: int) -> Step:
        """``lane``'s consumer exists, with ``pending`` messages for it (its create answer
        says): an empty lane is caught up at once, so a resync need not wait for its idle
        fetch to end."""
        if self.phase is Phase.DETACHED:
            raise ProtocolError("a consumer created while detached")
        self._lanes[lane].pending = pending
        if self.phase is Phase.RESYNCING and pending == 0:
            return self._lane_caught_up(lane, [], ())
        return Step(Action.FETCH)

    def on_check(self, lane: Lane, state: StreamState,
                 consumer: ConsumerState | None = None) -> Step:
        """The stream's state, then (``consumer``) the lane's consumer, read while it runs
        and no fetch of that lane is outstanding: recreate if it went stale, else move the
        lane's cursor up to what the consumer has shown it delivered."""
        cursor = self.cursor
        ls = self._lanes[lane]
        stale = cursor is None or (
            cursor.stream != state.name or cursor.identity != state.identity
            or cursor.seq > state.last_seq or (state.messages == 0 and cursor.seq > 0)
            or (consumer is not None and consumer.delivered > ls.consumer_seq))
        if (not stale and self.phase is Phase.RESYNCING and ls.unconfirmed
                and consumer is not None and consumer.pending == 0):
            ls.unconfirmed = False  # the idle fetch was real: everything delivered arrived
            return self._lane_caught_up(lane, [], ())
        action = self._step(Input.STALE if stale else Input.CHECK)
        # Not over an empty stream: there a cursor above 0 means "purged since".
        if (stale or cursor is None or consumer is None or consumer.pending
                or state.messages == 0 or cursor.lane(lane) >= state.last_seq
                or self.phase is Phase.RESYNCING):
            return Step(action)
        # Everything up to state.last_seq that this lane's filter matches was delivered
        # (nothing pending when asked after the state was read) and arrived (the count).
        self.cursor = cursor.moved(lane, state.last_seq)
        return Step(action, cursor=self.cursor)

    def on_batch(self, lane: Lane, deliveries: Sequence[Delivery]) -> Step:
        """Deliveries of one fetch of ``lane``, in order."""
        cursor = self.cursor
        if cursor is None or self.phase is Phase.DETACHED:
            raise ProtocolError(f"a batch while {self.phase.value}")
        ls = self._lanes[lane]
        ls.unconfirmed = False
        decoder = self._decoders[lane]
        events: list[Event] = []
        refused: list[Refusal] = []
        seq = cursor.lane(lane)
        gap = False
        for d in deliveries:
            if d.consumer_seq != ls.consumer_seq + 1:
                gap = True
                self.gaps += 1
                break
            ls.consumer_seq = d.consumer_seq
            ls.pending = d.pending
            self.delivered += 1
            if d.stream_seq <= seq:  # a redelivery of what is applied already
                continue
            seq = d.stream_seq
            try:
                event = decoder.decode(d.subject, d.payload, d.stream_seq)
            except WireError as exc:
                refused.append(Refusal(d.stream_seq, d.subject, exc.message))
                continue
            events.append(event)
            if self._seen is not None:
                self._seen.add(event.key)
        self.refused += len(refused)
        new_cursor = cursor.moved(lane, seq)
        if gap:
            self._step(Input.GAP)
            self.cursor = new_cursor
            return Step(Action.RECREATE, tuple(events), new_cursor, tuple(refused))
        self.cursor = new_cursor
        if self.phase is Phase.RESYNCING and deliveries and deliveries[-1].pending == 0:
            return self._lane_caught_up(lane, events, tuple(refused))
        self._step(Input.BATCH)
        return Step(Action.FETCH, tuple(events), new_cursor, tuple(refused))

    def on_idle(self, lane: Lane) -> Step:
        """A fetch of ``lane`` that heartbeats answered with no message: alive, caught up."""
        if self.phase is Phase.DETACHED:
            raise ProtocolError("an idle fetch while detached")
        self._lanes[lane].pending = 0
        if self.phase is Phase.RESYNCING:
            if self._lanes[lane].caught_up:
                return Step(self._step(Input.LANE_DONE))
            self._lanes[lane].unconfirmed = True
            return Step(self._step(Input.IDLE))
        return Step(self._step(Input.CAUGHT_UP))

    def wants_check(self, lane: Lane) -> bool:
        """Whether the shell must ``on_check`` this lane now (not at its next interval):
        an idle fetch during a resync that only a check can confirm."""
        return self.phase is Phase.RESYNCING and self._lanes[lane].unconfirmed

    def on_silence(self) -> Step:
        """A fetch that nothing answered, not even a heartbeat."""
        return Step(self._step(Input.SILENCE))

    def on_lost(self) -> Step:
        """An error or a disconnect: the consumers are presumed gone."""
        return Step(self._step(Input.LOST))

    def _lane_caught_up(self, lane: Lane, events: list[Event],
                        refused: tuple[Refusal, ...]) -> Step:
        self._lanes[lane].caught_up = True
        if not all(s.caught_up for s in self._lanes.values()):
            self._step(Input.LANE_DONE)
            return Step(Action.FETCH, tuple(events), self.cursor, refused)
        action = self._step(Input.CAUGHT_UP)
        assert self.cursor is not None
        assert self._seen is not None
        seen = self._seen | {e.key for e in events}
        self._seen = None
        tombstones = [
            Event(self.source, held.key, held.version + 1, deleted=True, seq=RESYNC_SEQ)
            for held in self._held()
            if held.source == self.source and not held.deleted and held.key not in seen
            and held.version < MAX_VERSION
        ]
        self.cursor = attrs.evolve(self.cursor, resync=False)
        self.tombstoned += len(tombstones)
        return Step(action, (*events, *tombstones), self.cursor, refused,
                    tombstoned=len(tombstones))

