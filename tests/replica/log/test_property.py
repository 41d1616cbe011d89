"""Property: for any event sequence, replaying the log gives the live view's digest."""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from imds_replica import Checkpoint, Event, View
from imds_replica._log import FileLog
from imds_replica._log._replay import recover_directory
from imds_replica._logport import EventLog
from imds_replica.testing._convergence import check_convergence
from imds_replica.testing._sim import Schedule
from imds_replica.testing._strategies import convergence_cases, tight_events

from ._helpers import reopen, replay_view

# Few keys, sources, versions and values, so ties and overwrites are the common case;
# value 1 next to tombstones exercises the tie-break between a value and a deletion.
events = st.builds(
    lambda source, key, version, value: Event(
        source, key, version, None if value == "DELETE" else value,
        deleted=value == "DELETE"),
    st.sampled_from(["a", "b"]),
    st.sampled_from([("k",), ("k", "x"), ("vms", "v1", "compute")]),
    st.integers(0, 3),
    st.sampled_from([1, "DELETE", "1", [1], {"a": 1}, None, 1.5]),
)
#: Few colliding events, each with no seq or a small one: the small pool makes the same
#: write under two seqs common (and ``convergence_cases`` adds rivals that are exactly that).
REDELIVERED = st.builds(
    lambda e, q: Event(e.source, e.key, e.version, e.value, deleted=e.deleted, seq=q),
    tight_events(), st.none() | st.integers(0, 3))
batches = st.lists(st.tuples(st.lists(events, min_size=1, max_size=4),
                             st.none() | st.integers(0, 9)), max_size=25)


@given(batches, st.sampled_from([None, 1, 4]), st.integers(-1, 25))
def test_replay_digest_equals_live_view(
        plan: list[tuple[list[Event], int | None]], snapshot_every: int | None,
        compact_at: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "log"

        async def run() -> None:
            view = View()
            log = FileLog(directory, fsync="none", snapshot_every=snapshot_every,
                          compact_ratio=None)
            async with trio.open_nursery() as nursery:
                await nursery.start(log.run, view)
                for i, (batch, cursor) in enumerate(plan):
                    if i == compact_at:
                        await log.compact()
                    cp = None if cursor is None else Checkpoint("a", cursor)
                    await log.append(batch, cp)
                nursery.cancel_scope.cancel()
            sequential = replay_view([(batch, None) for batch, _ in plan])
            assert view.digest() == sequential.digest()
            recovered, recovery = await reopen(directory)
            assert recovered.digest() == view.digest()
            cursors = [c for _, c in plan if c is not None]
            assert recovery.checkpoints.get("a") == (cursors[-1] if cursors else None)
            full = recover_directory(directory, writable=False, fsync=False,
                                     max_record=2**26, use_snapshots=False)
            replayed = View()
            for event in full.reducer.winners():
                replayed.apply(event)
            assert replayed.digest() == view.digest()

        trio.run(run)


@settings(max_examples=max(50, settings().max_examples // 2))
@given(convergence_cases(max_events=8, replicas=3, event_strategy=REDELIVERED))
def test_file_logs_converge_with_redeliveries_under_other_seqs(
        case: tuple[list[Event], list[Schedule]]) -> None:
    """The convergence property over real FileLogs, with writes delivered again under
    other seqs (``rivals``): a log that skips a redelivery winning on seq alone as
    "changes nothing" keeps a register whose seq depends on arrival order."""
    evs, schedules = case
    with tempfile.TemporaryDirectory() as tmp:

        def file_logs(host: int, previous: EventLog | None) -> EventLog:
            return FileLog(Path(tmp) / str(host), fsync="none", snapshot_every=None)

        check_convergence(evs, schedules, make_log=file_logs)
