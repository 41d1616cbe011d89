"""The host-owned stream cursor and the recovery decisions of a stream source.

Theory of operation
-------------------
The host's log owns the position: the cursor ``(stream, identity, seq)`` names the stream,
the stream's identity (its creation time: a deleted and recreated stream has a new one) and
the last stream sequence applied, and it travels as the ``Checkpoint`` of the batch that
applied it, so it is never durable ahead of its data. The consumer on the server is
disposable: the ``Follower`` asks for a new one whenever anything is off, starting at
``seq + 1``; nothing on the server needs to survive.

A follower is ``DETACHED`` (no consumer), ``FOLLOWING`` (reading from the cursor on) or
``RESYNCING`` (reading the whole stream from sequence 1 and noting every key that
reappears). The shell feeds it inputs derived from what the server said:

- ``RESUME`` / ``RESET`` — the stream's state, read before every (re)creation of the
  consumer. ``RESET`` when there is no cursor, the identity or stream name differs, the
  cursor lies beyond the stream's last sequence, or messages after the cursor are gone
  (``first_seq > seq + 1``: a purge, or older registers superseded, which a resync reads
  cheaply since the stream holds one message per register), or the stream is empty
  although the cursor is not at 0 (purged). ``RESUME_RESYNC`` when a
  resync was under way in this process and is continued where it got to; after a restart
  the set of keys seen is gone, so a cursor still marked ``resync`` means ``RESET``.
- ``BATCH`` — deliveries with consecutive consumer sequences, applied up to the last;
  ``GAP`` — a consumer sequence jumped (a delivery was lost): what came before the jump is
  applied and the consumer recreated at the cursor.
- ``CAUGHT_UP`` — nothing is pending (an idle fetch answered by heartbeats, or a batch whose
  last message reports no pending ones). It ends a resync: this source's registers that
  did not reappear are tombstoned, in the same batch as the cursor that clears ``resync``.
- ``CHECK`` / ``STALE`` — the stream's state (and the consumer's delivered count), read
  now and then while idle: ``STALE`` when it shows a new identity, an empty stream under a
  non-zero cursor (purged), a last sequence below the cursor, or a consumer that delivered
  more than arrived (the last deliveries were lost, so no later one shows the gap) — none
  of which a live consumer reports.
- ``SILENCE`` (a fetch that no heartbeat answered: consumer deleted, server restarted,
  leadership moved) and ``LOST`` (an error, a disconnect): recreate.

Every transition is a row of ``TRANSITIONS``; ``Follower._step`` is the one function that
consults it. Messages that break the wire contract are refused — counted, reported with
their stream sequence, never applied — and the cursor moves past them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from .._event import MAX_VERSION, Event, Key
from ._wire import WireError, decode_event


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
    CAUGHT_UP = "caught-up"
    CHECK = "check"
    STALE = "stale"
    SILENCE = "silence"
    LOST = "lost"


class Action(enum.Enum):
    CREATE = "create"  # a consumer starting at cursor.seq + 1
    FETCH = "fetch"  # the next fetch
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
    (P.RESYNCING, In.CAUGHT_UP): (P.FOLLOWING, A.FINISH_RESYNC),
    (P.RESYNCING, In.GAP): (P.DETACHED, A.RECREATE),
    (P.RESYNCING, In.SILENCE): (P.DETACHED, A.RECREATE),
    (P.RESYNCING, In.LOST): (P.DETACHED, A.RECREATE),
    (P.DETACHED, In.LOST): (P.DETACHED, A.RECREATE),
    (P.DETACHED, In.SILENCE): (P.DETACHED, A.RECREATE),
}
del P, In, A


class ProtocolError(RuntimeError):
    """The shell fed the follower an input its state does not take (our bug)."""


@attrs.frozen
class Cursor:
    """The position a host resumes from; ``resync``: a full resync was under way."""

    stream: str
    identity: str
    seq: int
    resync: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"stream": self.stream, "identity": self.identity, "seq": self.seq,
                "resync": self.resync}

    @classmethod
    def from_wire(cls, data: object) -> Cursor | None:
        """The cursor persisted in a checkpoint; None for anything else (then: resync)."""
        if not isinstance(data, Mapping):
            return None
        stream, identity, seq = data.get("stream"), data.get("identity"), data.get("seq")
        resync = data.get("resync", False)
        if not (isinstance(stream, str) and isinstance(identity, str)
                and type(seq) is int and seq >= 0 and type(resync) is bool):
            return None
        return cls(stream, identity, seq, resync)


@attrs.frozen
class StreamState:
    """What stream info says: identity (creation time) and the sequences it holds."""

    name: str
    identity: str
    first_seq: int
    last_seq: int
    messages: int


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
    then ``action``."""

    action: Action
    events: tuple[Event, ...] = ()
    cursor: Cursor | None = None  # the cursor to persist with ``events`` (None: unchanged)
    refused: tuple[Refusal, ...] = ()
    tombstoned: int = 0
    start_seq: int | None = None  # for CREATE: the consumer's first stream sequence


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
        self._consumer_seq = 0
        self.pending: int | None = None
        self.resyncs = 0
        self.recreations = 0
        self.gaps = 0
        self.refused = 0

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
        """The stream's state, read before creating a consumer: where to start it."""
        cursor = self.cursor
        continuing = (cursor is not None and cursor.resync and self._seen is not None)
        if (cursor is None or cursor.stream != state.name or cursor.identity != state.identity
                or cursor.seq > state.last_seq or cursor.seq + 1 < state.first_seq
                or (state.messages == 0 and cursor.seq > 0)
                or (cursor.resync and not continuing)):
            self._step(Input.RESET)
            self.resyncs += 1
            self._seen = set()
            self.cursor = Cursor(state.name, state.identity, 0, resync=True)
        else:
            self._step(Input.RESUME_RESYNC if continuing else Input.RESUME)
        assert self.cursor is not None
        self._consumer_seq = 0
        return Step(Action.CREATE, start_seq=self.cursor.seq + 1)

    def on_check(self, state: StreamState, delivered: int | None = None) -> Step:
        """The stream's state (and ``delivered``, the consumer's count of deliveries) read
        while a consumer runs and nothing is outstanding: recreate if it went stale."""
        cursor = self.cursor
        stale = cursor is None or (
            cursor.stream != state.name or cursor.identity != state.identity
            or cursor.seq > state.last_seq or (state.messages == 0 and cursor.seq > 0)
            or (delivered is not None and delivered > self._consumer_seq))
        return Step(self._step(Input.STALE if stale else Input.CHECK))

    def on_batch(self, deliveries: Sequence[Delivery]) -> Step:
        """Deliveries of one fetch, in order."""
        cursor = self.cursor
        if cursor is None or self.phase is Phase.DETACHED:
            raise ProtocolError(f"a batch while {self.phase.value}")
        events: list[Event] = []
        refused: list[Refusal] = []
        seq = cursor.seq
        gap = False
        for d in deliveries:
            if d.consumer_seq != self._consumer_seq + 1:
                gap = True
                self.gaps += 1
                break
            self._consumer_seq = d.consumer_seq
            self.pending = d.pending
            if d.stream_seq <= seq:  # a redelivery of what is applied already
                continue
            seq = d.stream_seq
            try:
                event = decode_event(d.subject, d.payload, seq=d.stream_seq,
                                     expect_cluster=self.cluster, expect_host=self.host,
                                     expect_source=self.source)
            except WireError as exc:
                refused.append(Refusal(d.stream_seq, d.subject, exc.message))
                continue
            events.append(event)
            if self._seen is not None:
                self._seen.add(event.key)
        self.refused += len(refused)
        new_cursor = attrs.evolve(cursor, seq=seq)
        if gap:
            self._step(Input.GAP)
            self.cursor = new_cursor
            return Step(Action.RECREATE, tuple(events), new_cursor, tuple(refused))
        if self.phase is Phase.RESYNCING and deliveries and deliveries[-1].pending == 0:
            self.cursor = new_cursor
            return self._finish(events, tuple(refused))
        self._step(Input.BATCH)
        self.cursor = new_cursor
        return Step(Action.FETCH, tuple(events), new_cursor, tuple(refused))

    def on_idle(self) -> Step:
        """A fetch that heartbeats answered with no message: alive and caught up."""
        if self.phase is Phase.DETACHED:
            raise ProtocolError("an idle fetch while detached")
        self.pending = 0
        if self.phase is Phase.RESYNCING:
            return self._finish([], ())
        return Step(self._step(Input.CAUGHT_UP))

    def on_silence(self) -> Step:
        """A fetch that nothing answered, not even a heartbeat."""
        return Step(self._step(Input.SILENCE))

    def on_lost(self) -> Step:
        """An error or a disconnect: the consumer is presumed gone."""
        return Step(self._step(Input.LOST))

    def _finish(self, events: list[Event], refused: tuple[Refusal, ...]) -> Step:
        action = self._step(Input.CAUGHT_UP)
        assert self.cursor is not None
        assert self._seen is not None
        seen = self._seen | {e.key for e in events}
        self._seen = None
        arriving = {e.key for e in events}
        tombstones = [
            Event(self.source, held.key, held.version + 1, deleted=True)
            for held in self._held()
            if held.source == self.source and not held.deleted and held.key not in seen
            and held.key not in arriving and held.version < MAX_VERSION
        ]
        self.cursor = attrs.evolve(self.cursor, resync=False)
        return Step(action, (*events, *tombstones), self.cursor, refused,
                    tombstoned=len(tombstones))
