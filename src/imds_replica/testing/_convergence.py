"""The convergence checker: the property every replica, log and delivery path must keep.

``check_convergence(events, schedules)`` runs a ``Simulation`` (one replica per schedule,
each receiving every event at least once, in its schedule's order, with duplicates, lost
deliveries and crashes) and asserts that every replica ends with the same registers as a
reference view that applied each event once: identical ``digest()``, the same delivery
``seq`` in every register (of two deliveries of one write the smaller is kept, so even that
must not depend on arrival order), and for every document the same ``document()`` (compared
by canonical encoding, so ``1``, ``1.0`` and ``True`` are told apart) and the same content
ETag. With ``final_restart`` (default) each replica's log
is also reopened and must recover that same view. Point ``make_log`` at your own log and
``deliver`` at your own source adapter to check them under the same schedules.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio
import trio.testing

from .. import _codec
from .._event import Event, Key
from .._view import View, _canonical
from ._sim import Deliverer, LogFactory, Schedule, Simulation, memory_logs, push_delivery


class ConvergenceError(AssertionError):
    """Replicas that received the same events disagree; the message names the schedule."""


@attrs.frozen
class ConvergenceOutcome:
    """What every replica agreed on."""

    digest: bytes
    documents: dict[Key, Any]
    replicas: int
    restarts: int  # crash/restarts performed across all replicas


def check_convergence(events: Sequence[Event], schedules: Sequence[Schedule], *,
                      make_log: LogFactory = memory_logs, deliver: Deliverer = push_delivery,
                      final_restart: bool = True,
                      view_factory: Callable[[], View] = View) -> ConvergenceOutcome:
    """Run the simulation on a fresh ``MockClock`` (autojump) and check it; see the module
    docstring. Raises ``ConvergenceError`` on disagreement, ``ValueError`` for a schedule
    that does not deliver every event (no checker can expect convergence then)."""
    run = functools.partial(check_convergence_async, events, schedules, make_log=make_log,
                            deliver=deliver, final_restart=final_restart,
                            view_factory=view_factory)
    return trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))


async def check_convergence_async(events: Sequence[Event], schedules: Sequence[Schedule], *,
                                  make_log: LogFactory = memory_logs,
                                  deliver: Deliverer = push_delivery,
                                  final_restart: bool = True,
                                  view_factory: Callable[[], View] = View,
                                  ) -> ConvergenceOutcome:
    """``check_convergence`` inside a running trio (use a ``MockClock`` to skip the waits)."""
    events = tuple(events)
    everything = frozenset(range(len(events)))
    for n, schedule in enumerate(schedules):
        missing = everything - schedule.delivered()
        if missing:
            raise ValueError(f"schedule {n} never delivers events {sorted(missing)}: {schedule}")
    reference = view_factory()
    for event in events:
        reference.apply(event)
    expected = _snapshot(reference, events)

    sim = Simulation(events, schedules, make_log=make_log, deliver=deliver,
                     final_restart=final_restart, view_factory=view_factory)
    await sim.run()
    for host, schedule in zip(sim.hosts, schedules, strict=True):
        _compare(expected, _snapshot(host.view, events), host.index, schedule, "final view",
                 events)
        if final_restart:
            _compare(expected, _snapshot(sim.recovered[host.index], events), host.index,
                     schedule, "view recovered from its log", events)
    return ConvergenceOutcome(expected.digest, expected.documents, len(schedules),
                              sum(h.restarts for h in sim.hosts))


@attrs.frozen
class _Snapshot:
    digest: bytes
    documents: dict[Key, Any]
    encoded: dict[Key, bytes]
    etags: dict[Key, str | None]
    seqs: dict[Key, int | None]  # per register (``digest`` leaves seq out)


def _snapshot(view: View, events: Sequence[Event]) -> _Snapshot:
    doc_keys = sorted({view.document_key(e.key) for e in events})
    documents = {k: view.document(k) for k in doc_keys}
    encoded = {k: _codec.encode(_canonical(d)) for k, d in documents.items()}
    etags = {}
    for k in doc_keys:
        info = view.document_info(k)
        etags[k] = None if info is None else info.etag
    seqs = {e.key: e.seq for e in view.registers()}
    return _Snapshot(view.digest(), documents, encoded, etags, seqs)


def _compare(expected: _Snapshot, got: _Snapshot, index: int, schedule: Schedule,
             what: str, events: Sequence[Event]) -> None:
    problems = []
    if got.digest != expected.digest:
        problems.append(f"digest {got.digest.hex()[:16]}… "
                        f"!= expected {expected.digest.hex()[:16]}…")
    for key, want in expected.encoded.items():
        if got.encoded.get(key) != want:
            problems.append(f"document {key!r}: {got.documents.get(key)!r} "
                            f"!= expected {expected.documents[key]!r}")
        elif got.etags.get(key) != expected.etags[key]:
            problems.append(f"document {key!r}: etag {got.etags.get(key)} "
                            f"!= expected {expected.etags[key]}")
    for key, seq in expected.seqs.items():
        if key in got.seqs and got.seqs[key] != seq:
            problems.append(f"register {key!r}: seq {got.seqs[key]} != expected {seq}")
    if problems:
        listing = "\n".join(f"  {i}: {e!r}" for i, e in enumerate(events))
        raise ConvergenceError(
            f"replica {index} ({what}) diverged under schedule {index}: {schedule}\n"
            + "\n".join("  - " + p for p in problems[:10])
            + f"\nevents:\n{listing}"
        )
