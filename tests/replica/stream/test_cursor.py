"""The cursor state machine against a simulated stream that drops deliveries, recreates
consumers, restarts, purges, is deleted and recreated, and carries garbage; the host reads
it through two single-filter consumers (its own lane and ``_all``), fetched in any
interleaving, and restarts from its persisted cursor. Whatever happens, once the stream is
quiet the host's registers equal the stream's current ones."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imds_replica import Event, _codec, merge
from imds_replica._stream import _wire
from imds_replica._stream._cursor import (
    LANES,
    TRANSITIONS,
    Action,
    ConsumerState,
    Cursor,
    Delivery,
    Follower,
    Lane,
    Phase,
    ProtocolError,
    StreamState,
)

CLUSTER, HOST, SOURCE = "c1", "h1", "fleet"
STREAM = _wire.stream_name(CLUSTER)
KEYS = [("vms", f"vm-{i}", "compute", "name") for i in range(4)]


class SimStream:
    """A stream keeping one message per subject, with a disposable consumer."""

    def __init__(self) -> None:
        self.generation = itertools.count()
        self.identity = "t0"
        self.last_seq = 0
        self.messages: dict[str, tuple[int, bytes]] = {}
        #: Per lane: next stream seq, delivered count.
        self.consumers: dict[Lane, dict[str, int]] = {}
        self.drop_next = False

    def state(self) -> StreamState:
        first = min((s for s, _ in self.messages.values()), default=self.last_seq + 1)
        return StreamState(STREAM, self.identity, first, self.last_seq, len(self.messages))

    def publish(self, subject: str, payload: bytes) -> None:
        self.last_seq += 1
        self.messages[subject] = (self.last_seq, payload)

    def purge(self) -> None:
        self.messages.clear()

    def recreate(self) -> None:
        self.identity = f"t{next(self.generation) + 1}"
        self.last_seq = 0
        self.messages.clear()
        self.consumers.clear()

    def create_consumer(self, lane: Lane, start_seq: int) -> None:
        self.consumers[lane] = {"next": start_seq, "delivered": 0}

    def _matching(self, lane: Lane, after: int) -> list[tuple[int, str, bytes]]:
        scope = HOST if lane is Lane.HOST else "_all"
        prefix = f"imds.{CLUSTER}.{scope}.{SOURCE}."
        return sorted((seq, subj, payload) for subj, (seq, payload) in self.messages.items()
                      if seq >= after and subj.startswith(prefix))

    def consumer_state(self, lane: Lane) -> ConsumerState | None:
        consumer = self.consumers.get(lane)
        if consumer is None:
            return None
        return ConsumerState(consumer["delivered"],
                             len(self._matching(lane, consumer["next"])))

    def fetch(self, lane: Lane, batch: int) -> list[Delivery] | None:
        """Up to ``batch`` deliveries; ``None`` when no consumer answers (silence)."""
        consumer = self.consumers.get(lane)
        if consumer is None:
            return None
        todo = self._matching(lane, consumer["next"])
        out = []
        for i, (seq, subj, payload) in enumerate(todo[:batch]):
            consumer["delivered"] += 1
            consumer["next"] = seq + 1
            if self.drop_next:
                self.drop_next = False
                continue
            out.append(Delivery(subj, payload, seq, consumer["delivered"],
                                len(todo) - i - 1))
        return out

    def expected(self) -> dict[tuple[str, ...], Event]:
        """The winner per key of what the stream holds for this host, tombstones dropped."""
        best: dict[tuple[str, ...], Event] = {}
        for subj, (_, payload) in self.messages.items():
            try:
                event = _wire.decode_event(subj, payload, expect_host=HOST,
                                           expect_source=SOURCE)
            except _wire.WireError:
                continue
            winner = merge(best.get(event.key), event)
            assert winner is not None
            best[event.key] = winner
        return {k: e for k, e in best.items() if not e.deleted}


class SimHost:
    """A host: a view (key -> winner) and the cursor persisted with the last batch."""

    def __init__(self) -> None:
        self.view: dict[tuple[str, ...], Event] = {}
        self.persisted: Cursor | None = None
        self.follower = self._follower()
        self.pending_step: Action = Action.RECREATE

    def _follower(self) -> Follower:
        return Follower(stream=STREAM, cluster=CLUSTER, host=HOST, source=SOURCE,
                        cursor=self.persisted, held=self._held)

    def _held(self) -> Iterable[Event]:
        return list(self.view.values())

    def restart(self) -> None:
        self.follower = self._follower()
        self.pending_step = Action.RECREATE

    def submit(self, events: Iterable[Event], cursor: Cursor | None) -> None:
        for event in events:
            winner = merge(self.view.get(event.key), event)
            assert winner is not None
            self.view[event.key] = winner
        if cursor is not None:
            self.persisted = cursor

    def work(self, stream: SimStream, batch: int, lane: Lane) -> bool:
        """One round on ``lane``; True when it was an idle fetch while following (quiet)."""
        if self.pending_step is Action.RECREATE:
            step = self.follower.on_stream(stream.state())
            for each in LANES:
                stream.create_consumer(each, step.start[each])
                state = stream.consumer_state(each)
                assert state is not None
                created = self.follower.on_created(each, state.pending)
                self.submit(created.events, created.cursor)
            self.pending_step = Action.FETCH
            return False
        got = stream.fetch(lane, batch)
        if got is None:
            step = self.follower.on_silence()
        elif not got:
            step = self.follower.on_idle(lane)
            if step.action is Action.FETCH:
                self.submit(step.events, step.cursor)
                step = self.follower.on_check(lane, stream.state(),
                                              stream.consumer_state(lane))
            quiet = self.follower.phase is Phase.FOLLOWING and step.action is Action.FETCH
            self.submit(step.events, step.cursor)
            self.pending_step = step.action
            return quiet
        else:
            step = self.follower.on_batch(lane, got)
        self.submit(step.events, step.cursor)
        self.pending_step = (Action.FETCH if step.action is Action.FINISH_RESYNC
                             else step.action)
        return False

    def live(self) -> dict[tuple[str, ...], Event]:
        return {k: e for k, e in self.view.items() if not e.deleted}


OPS = ["publish"] * 4 + ["work"] * 4 + [
    "drop", "restart-server", "delete-consumer", "restart-host", "recreate",
    "garbage", "republish"]
# Not "purge" at random: a purge followed by new publishes before any host looked is not
# detectable by a host that had caught up (docs/fleet.md); the purge a host can see is
# tested below.
ops = st.tuples(st.sampled_from(OPS), st.sampled_from(KEYS),
                st.sampled_from([HOST, None, "h2"]), st.booleans(), st.sampled_from(LANES))


@settings(max_examples=2000, deadline=None)
@given(st.lists(ops, max_size=60), st.integers(1, 4))
def test_converges_to_the_stream(script: list[tuple[object, ...]], batch: int) -> None:
    stream, host = SimStream(), SimHost()
    versions = itertools.count(1)
    published: dict[str, Event] = {}
    for op, key, scope, deleted, lane in script:
        if op == "publish":
            assert isinstance(key, tuple)
            assert isinstance(deleted, bool)
            event = Event(SOURCE, key, next(versions), None if deleted else "v",
                          deleted=deleted)
            subject = _wire.subject(CLUSTER, scope if isinstance(scope, str) else None,
                                    SOURCE, key)
            published[subject] = event
            stream.publish(subject, _wire.encode_event(event))
        elif op == "work":
            assert isinstance(lane, Lane)
            host.work(stream, batch, lane)
        elif op == "drop":
            stream.drop_next = True
        elif op == "restart-server":
            stream.consumers.clear()
        elif op == "delete-consumer":
            assert isinstance(lane, Lane)
            stream.consumers.pop(lane, None)
        elif op == "restart-host":
            host.restart()
        elif op == "purge":
            stream.purge()
        elif op == "recreate":
            stream.recreate()
        elif op == "republish":  # what a regional publisher does after a recreation
            for subject, event in published.items():
                if subject not in stream.messages:
                    fresh = Event(SOURCE, event.key, next(versions), event.value,
                                  deleted=event.deleted)
                    published[subject] = fresh
                    stream.publish(subject, _wire.encode_event(fresh))
        elif op == "garbage":
            stream.publish(f"imds.{CLUSTER}.{HOST}.{SOURCE}.{'0' * 32}", b"\xc1")
    stream.drop_next = False
    quiet = 0
    for i in range(1000):
        quiet = quiet + 1 if host.work(stream, batch, LANES[i % 2]) else 0
        if quiet == 2:  # both lanes idle in a row
            break
    else:
        pytest.fail("the host never caught up")
    assert host.live() == stream.expected()
    assert host.persisted is not None
    assert not host.persisted.resync
    assert host.persisted.identity == stream.identity


def test_a_gap_applies_what_came_before_and_recreates() -> None:
    follower = Follower(stream=STREAM, cluster=CLUSTER, host=HOST, source=SOURCE,
                        cursor=Cursor(STREAM, "t0", 0, 0), held=list)
    step = follower.on_stream(StreamState(STREAM, "t0", 1, 3, 3))
    assert follower.phase is Phase.FOLLOWING
    assert step.start == {Lane.HOST: 1, Lane.ALL: 1}
    payload = [_wire.encode_event(Event(SOURCE, k, 1, "v")) for k in KEYS[:3]]
    subjects = [_wire.subject(CLUSTER, HOST, SOURCE, k) for k in KEYS[:3]]
    step = follower.on_batch(Lane.HOST, [Delivery(subjects[0], payload[0], 1, 1, 2),
                              Delivery(subjects[2], payload[2], 3, 3, 0)])
    assert step.action is Action.RECREATE
    assert [e.key for e in step.events] == [KEYS[0]]
    assert step.cursor == Cursor(STREAM, "t0", 1, 0)
    assert follower.phase is Phase.DETACHED
    assert follower.gaps == 1


def test_new_identity_resyncs_and_tombstones_what_did_not_reappear() -> None:
    held = [Event(SOURCE, KEYS[0], 3, "old"), Event(SOURCE, KEYS[1], 4, "kept"),
            Event("other", KEYS[2], 1, "theirs")]
    follower = Follower(stream=STREAM, cluster=CLUSTER, host=HOST, source=SOURCE,
                        cursor=Cursor(STREAM, "t0", 40, 40), held=lambda: held)
    step = follower.on_stream(StreamState(STREAM, "t1", 1, 1, 1))
    assert step.start == {Lane.HOST: 1, Lane.ALL: 1}
    assert follower.phase is Phase.RESYNCING
    assert follower.on_idle(Lane.HOST).action is Action.FETCH  # the other lane still reads
    assert follower.phase is Phase.RESYNCING
    # An idle fetch during a resync counts once the consumer shows nothing was lost.
    assert follower.wants_check(Lane.HOST)
    state = StreamState(STREAM, "t1", 1, 1, 1)
    assert follower.on_check(Lane.HOST, state, ConsumerState(0, 0)).action is Action.FETCH
    assert not follower.wants_check(Lane.HOST)
    kept = Event(SOURCE, KEYS[1], 4, "kept")
    step = follower.on_batch(Lane.ALL, [Delivery(_wire.subject(CLUSTER, None, SOURCE, KEYS[1]),
                                       _wire.encode_event(kept), 1, 1, 0)])
    assert step.events == (kept, Event(SOURCE, KEYS[0], 4, deleted=True))
    assert step.tombstoned == 1
    assert step.cursor == Cursor(STREAM, "t1", 0, 1, resync=False)
    assert follower.phase is Phase.FOLLOWING


def test_garbage_is_refused_and_skipped() -> None:
    follower = Follower(stream=STREAM, cluster=CLUSTER, host=HOST, source=SOURCE,
                        cursor=Cursor(STREAM, "t0", 0, 0), held=list)
    follower.on_stream(StreamState(STREAM, "t0", 1, 1, 1))
    step = follower.on_batch(Lane.HOST, [Delivery(f"imds.{CLUSTER}.{HOST}.{SOURCE}.{'0' * 32}",
                                       b"junk", 1, 1, 0)])
    assert step.events == ()
    assert step.cursor == Cursor(STREAM, "t0", 1, 0)
    assert [r.stream_seq for r in step.refused] == [1]
    assert follower.refused == 1


def test_a_cursor_marked_resync_restarts_the_resync_after_a_restart() -> None:
    follower = Follower(stream=STREAM, cluster=CLUSTER, host=HOST, source=SOURCE,
                        cursor=Cursor(STREAM, "t0", 5, 5, resync=True), held=list)
    step = follower.on_stream(StreamState(STREAM, "t0", 1, 9, 9))
    assert step.start == {Lane.HOST: 1, Lane.ALL: 1}
    assert follower.phase is Phase.RESYNCING


@pytest.mark.parametrize("data", [None, "x", {"stream": STREAM}, {
    "stream": STREAM, "identity": "t", "seq": -1}, {"stream": STREAM, "identity": "t",
                                                     "seq": True}])
def test_foreign_cursors_mean_resync(data: object) -> None:
    assert Cursor.from_wire(data) is None


def test_cursor_wire_round_trip() -> None:
    cursor = Cursor(STREAM, "2026-01-01T00:00:00Z", 12, 9, resync=True)
    assert Cursor.from_wire(cursor.to_wire()) == cursor


def test_the_table_refuses_inputs_out_of_state() -> None:
    follower = Follower(stream=STREAM, cluster=CLUSTER, host=HOST, source=SOURCE,
                        cursor=None, held=list)
    with pytest.raises(ProtocolError):
        follower.on_idle(Lane.HOST)
    assert all(isinstance(v[1], Action) for v in TRANSITIONS.values())


def test_a_purge_seen_while_empty_resyncs_and_tombstones() -> None:
    stream, host = SimStream(), SimHost()
    for key in KEYS:
        stream.publish(_wire.subject(CLUSTER, HOST, SOURCE, key),
                       _wire.encode_event(Event(SOURCE, key, 1, "v")))
    for i in range(20):
        host.work(stream, 2, LANES[i % 2])
    assert len(host.live()) == len(KEYS)
    stream.purge()
    for i in range(20):
        host.work(stream, 2, LANES[i % 2])
    assert host.live() == {}
    assert host.follower.resyncs == 2


def test_a_lost_last_delivery_is_found_by_the_check() -> None:
    """No later delivery shows the gap: the consumer's delivered count does."""
    follower = Follower(stream=STREAM, cluster=CLUSTER, host=HOST, source=SOURCE,
                        cursor=Cursor(STREAM, "t0", 0, 0), held=list)
    state = StreamState(STREAM, "t0", 1, 1, 1)
    follower.on_stream(state)
    follower.on_idle(Lane.HOST)  # the one delivery was lost on the way
    assert (follower.on_check(Lane.HOST, state, ConsumerState(1, 0)).action
            is Action.RECREATE)
    assert follower.phase is Phase.DETACHED


def test_an_old_single_consumer_cursor_covers_both_lanes() -> None:
    assert Cursor.from_wire({"stream": STREAM, "identity": "t", "seq": 7}) == Cursor(
        STREAM, "t", 7, 7)


def test_a_lane_at_zero_does_not_resync_for_messages_gone_elsewhere() -> None:
    """Other hosts' registers superseded (first_seq moved on) are no reason to resync a
    lane that holds nothing; a lane that applied something below first_seq - 1 is."""
    follower = Follower(stream=STREAM, cluster=CLUSTER, host=HOST, source=SOURCE,
                        cursor=Cursor(STREAM, "t0", 0, 9), held=list)
    step = follower.on_stream(StreamState(STREAM, "t0", 8, 20, 5))
    assert follower.phase is Phase.FOLLOWING
    assert step.start == {Lane.HOST: 1, Lane.ALL: 10}
    follower = Follower(stream=STREAM, cluster=CLUSTER, host=HOST, source=SOURCE,
                        cursor=Cursor(STREAM, "t0", 3, 9), held=list)
    follower.on_stream(StreamState(STREAM, "t0", 8, 20, 5))
    assert follower.phase is Phase.RESYNCING


def test_a_check_moves_an_idle_lane_up_to_the_streams_last_sequence() -> None:
    follower = Follower(stream=STREAM, cluster=CLUSTER, host=HOST, source=SOURCE,
                        cursor=Cursor(STREAM, "t0", 2, 5), held=list)
    state = StreamState(STREAM, "t0", 1, 30, 12)
    follower.on_stream(state)
    follower.on_idle(Lane.HOST)
    # Something is still pending: the lane is not known to be applied up to 30.
    assert follower.on_check(Lane.HOST, state, ConsumerState(0, 1)).cursor is None
    step = follower.on_check(Lane.HOST, state, ConsumerState(0, 0))
    assert step.action is Action.FETCH
    assert step.cursor == Cursor(STREAM, "t0", 30, 5)


def test_a_host_lane_delivery_of_all_subjects_is_refused() -> None:
    follower = Follower(stream=STREAM, cluster=CLUSTER, host=HOST, source=SOURCE,
                        cursor=Cursor(STREAM, "t0", 0, 0), held=list)
    follower.on_stream(StreamState(STREAM, "t0", 1, 2, 2))
    event = Event(SOURCE, KEYS[0], 1, "v")
    step = follower.on_batch(Lane.HOST, [
        Delivery(_wire.subject(CLUSTER, None, SOURCE, KEYS[0]), _wire.encode_event(event),
                 1, 1, 1),
        Delivery(_wire.subject(CLUSTER, HOST, SOURCE, KEYS[0]), _wire.encode_event(event),
                 2, 2, 0)])
    assert [r.stream_seq for r in step.refused] == [1]
    assert [e.seq for e in step.events] == [2]


def test_a_lost_last_delivery_during_a_resync_does_not_end_it() -> None:
    """Found by the property: the stream is recreated, and the only message of the resync
    that follows is lost on its way, so the lane's fetch looks idle. Ending the resync
    there tombstoned the register the lost message carried (and its tombstone then won
    against it on redelivery). An idle fetch during a resync now counts only once a check
    of the consumer shows everything it delivered arrived."""
    stream, host = SimStream(), SimHost()
    key = KEYS[0]
    subject = _wire.subject(CLUSTER, HOST, SOURCE, key)
    stream.publish(subject, _wire.encode_event(Event(SOURCE, key, 1, "old")))
    host.work(stream, 1, Lane.HOST)  # create the consumers
    host.work(stream, 1, Lane.HOST)  # the message: the first resync ends
    assert host.live() == stream.expected()
    stream.recreate()
    stream.publish(subject, _wire.encode_event(Event(SOURCE, key, 2, "new")))
    stream.drop_next = True
    host.work(stream, 1, Lane.HOST)  # silence: the consumers went with the stream
    host.work(stream, 1, Lane.HOST)  # recreate: a resync of the new identity
    host.work(stream, 1, Lane.HOST)  # the message is lost: an idle-looking fetch
    assert host.follower.phase is not Phase.FOLLOWING  # the resync did not end on it
    assert host.view[key].value == "old"  # and nothing was tombstoned
    for i in range(20):
        host.work(stream, 1, LANES[i % 2])
    assert host.live() == stream.expected()
    assert host.view[key].value == "new"


def _resynced_then_published(value: object, version_after: int) -> tuple[SimHost, SimHost,
                                                                         SimStream]:
    """Host A holds KEYS[0] at version 5 and resyncs on a recreated stream that lacks it
    (tombstone at 6); then the regional side publishes KEYS[0] at ``5 + version_after``.
    Host C held the same register but was away: it resyncs only after that publish."""
    stream = SimStream()
    subject = _wire.subject(CLUSTER, HOST, SOURCE, KEYS[0])
    stream.publish(subject, _wire.encode_event(Event(SOURCE, KEYS[0], 5, "old")))
    a, c = SimHost(), SimHost()
    for host in (a, c):
        for lane in (Lane.HOST, Lane.HOST, Lane.ALL):
            host.work(stream, 4, lane)
        assert host.live()[KEYS[0]].version == 5
    stream.recreate()
    for _ in range(3):  # silence, then the resync, which ends at once (both lanes empty)
        a.work(stream, 4, Lane.HOST)
    assert a.view[KEYS[0]] == Event(SOURCE, KEYS[0], 6, deleted=True)
    stream.publish(subject, _wire.encode_event(Event(SOURCE, KEYS[0], 5 + version_after,
                                                     value)))
    for host in (a, c):
        for i in range(12):
            host.work(stream, 4, LANES[i % 2])
    return a, c, stream


@pytest.mark.parametrize("version_after", [2, 9])
def test_a_write_above_the_resync_tombstone_wins_on_every_host(version_after: int) -> None:
    a, c, stream = _resynced_then_published("v", version_after)
    assert a.live() == c.live() == stream.expected()


def test_a_write_at_the_resync_tombstones_version_is_decided_by_its_digest() -> None:
    """A resync tombstones at ``held + 1``, so a write published at exactly that version
    ties with it on version and source. A write whose digest ordered above the old
    tombstone marker's won before session 5 too; now every value beats the tombstone (its
    digest is empty), and this one still does."""
    tombstone = Event(SOURCE, KEYS[0], 6, deleted=True)
    above = "w"  # its digest orders above the old tombstone marker's at this key and version
    assert Event(SOURCE, KEYS[0], 6, above).digest > _codec.digest(_codec.TOMBSTONE_MARKER)
    assert Event(SOURCE, KEYS[0], 6, above).digest > tombstone.digest == b""
    a, c, stream = _resynced_then_published(above, 1)
    assert a.live() == c.live() == stream.expected()


def test_a_write_at_the_resync_tombstones_version_wins_on_every_host() -> None:
    """The session 3 divergence: "v"'s digest ordered below the old tombstone marker's
    (blake2b of 0xc1), so a host that resynced before the publish kept its tombstone at 6.
    A tombstone's digest is now empty: a value beats it at equal version and source."""
    below = "v"
    assert Event(SOURCE, KEYS[0], 6, below).digest < _codec.digest(_codec.TOMBSTONE_MARKER)
    a, c, stream = _resynced_then_published(below, 1)
    assert c.live() == stream.expected()  # the host that resynced after the publish
    assert a.live() == stream.expected()  # the host that resynced before it
