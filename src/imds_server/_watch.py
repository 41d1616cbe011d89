"""Parked watchers (``wait_for_change``) and the fan-out that answers them after a change.

A change of a VM's document used to wake every watcher parked on it, each in its own
task step: wake-up, cancel-scope exit, ``VmApi.resume``, encoding, ``send``, access record.
With 10,000 watchers on one document those steps ran in one scheduler pass and the last
answer left about 40 µs x 10,000 = 0.4 s after the change (twice that with a CPU hog on
the core). Measured with py-spy, the ``send`` itself (loopback TCP: the receiving side's
kernel work runs on the sender's core) was about a quarter of it; the rest was the
per-watcher task work.

So a change is answered by one fan-out task, send first: it walks the document's parked
watchers, computes each distinct answer once (``VmApi.resume`` per caller, target,
``last_etag`` and ``If-None-Match``: 10,000 watchers of one path render once), encodes it
once, and writes it to each watcher's socket with one non-blocking ``send``. Only then are
the watchers' tasks woken, to do what is left (the rest of a partial send, the access
record, the slot, the next request). A watcher whose answer did not change (its path's
ETag is still ``last_etag``: the change was elsewhere in the document) is not woken at all.
The fan-out takes a checkpoint every ``BATCH`` sends, so that a long one does not hold the
loop away from other guests' requests (no watcher is woken meanwhile: the sends go first),
and wakes the answered watchers ``BATCH`` at a time, a checkpoint between, for the same
reason.

Only plain answers are sent by the fan-out (``refused`` is None: a 200 or a 304). Anything
else — the caller's address now belongs to another VM (403), an ``extended`` refusal —
and watchers without a ``Reply`` (``Server.park`` called directly; test mode's wrapped
app) are woken as before and compute their own answer (``VmApi.resume``) in their task.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio
from trio.lowlevel import (
    Abort,
    Task,
    checkpoint,
    current_task,
    reschedule,
    wait_task_rescheduled,
)

from ._request import Park, Response

if TYPE_CHECKING:
    from ._api import VmApi
    from ._http import WireCache

#: Sends between two checkpoints of the fan-out (about 2-5 ms of loop time on loopback).
BATCH = 256

DocKey = tuple[str, ...]


class Reply:
    """A parked watcher's connection, as the fan-out needs it to answer there itself, and
    what the fan-out leaves for the connection: the answer, its encoded bytes, how many of
    them it sent (the connection sends the rest) and when (``time.perf_counter``)."""

    __slots__ = ("data", "head_only", "keep_alive", "response", "sent", "sent_at", "sock",
                 "wire")

    def __init__(self, sock: socket.socket, wire: WireCache, keep_alive: bool,
                 head_only: bool) -> None:
        self.sock = sock
        self.wire = wire
        self.keep_alive = keep_alive
        self.head_only = head_only
        self.response: Response | None = None  # set once the fan-out answered
        self.data = b""
        self.sent = 0
        self.sent_at = 0.0


class _Watcher:
    __slots__ = ("park", "reply", "task")

    def __init__(self, park: Park, reply: Reply | None) -> None:
        self.park = park
        self.reply = reply
        self.task: Task | None = None  # set while waiting


class Watches:
    """The parked watchers by document and caller, and the fan-out task (``run``)."""

    def __init__(self, api: VmApi, clock: Callable[[], float]) -> None:
        self._api = api
        self._clock = clock
        #: doc_key -> watchers with a ``Reply`` (answered by the fan-out) / without.
        self._fast: dict[DocKey, dict[_Watcher, None]] = {}
        self._slow: dict[DocKey, dict[_Watcher, None]] = {}
        #: caller address -> its parked watchers (a re-pointed address wakes them all).
        self._callers: dict[str, dict[_Watcher, None]] = {}
        self._pending: dict[DocKey, None] = {}  # changed documents the fan-out owes
        self._kick = trio.Event()
        #: The current fan-out's answers by (caller, vm, target, last_etag, If-None-Match);
        #: cleared by any change, so that no answer older than the view is sent.
        self._answers: dict[tuple[Any, ...], Response | Park] = {}
        self.fanned_out = 0  # answers sent by the fan-out (for tests and telemetry)

    def __len__(self) -> int:
        return sum(len(w) for w in self._callers.values())

    # -- the watchers' side ----------------------------------------------------------------
    def add(self, park: Park, reply: Reply | None) -> _Watcher:
        watcher = _Watcher(park, reply)
        table = self._fast if reply is not None else self._slow
        table.setdefault(park.doc_key, {})[watcher] = None
        self._callers.setdefault(park.caller, {})[watcher] = None
        return watcher

    def remove(self, watcher: _Watcher) -> None:
        park = watcher.park
        _discard(self._fast if watcher.reply is not None else self._slow, park.doc_key,
                 watcher)
        _discard(self._callers, park.caller, watcher)

    async def wait(self, watcher: _Watcher) -> None:
        """Until woken (a change, a re-pointed caller, the drain) or cancelled."""
        watcher.task = current_task()

        def abort(_: Any) -> Abort:
            watcher.task = None
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)

    # -- changes -----------------------------------------------------------------------------
    def changed(self, doc_key: DocKey) -> None:
        """A document changed (the view's subscription): wake its reply-less watchers now,
        leave the rest to the fan-out."""
        self._answers.clear()
        for watcher in self._slow.get(doc_key, ()):
            _wake(watcher)
        if doc_key in self._fast:
            self._pending[doc_key] = None
            self._kick.set()
        if len(doc_key) == 2 and doc_key[0] == "callers":
            # The address was re-pointed (or unmapped): its watchers re-check at once in
            # their task, and answer 403 now rather than at their timeout.
            for watcher in self._callers.get(doc_key[1], ()):
                _wake(watcher)

    def drain(self) -> None:
        """Wake every watcher (the server is draining: each answers its current value)."""
        for watchers in self._callers.values():
            for watcher in watchers:
                _wake(watcher)

    async def run(self) -> None:
        """The fan-out: answers the parked watchers of each changed document."""
        while True:
            await self._kick.wait()
            self._kick = trio.Event()
            while self._pending:
                doc_key = next(iter(self._pending))
                del self._pending[doc_key]
                await self._fan_out(doc_key)

    async def _fan_out(self, doc_key: DocKey) -> None:
        watchers = self._fast.get(doc_key)
        if not watchers:
            return
        api, answers = self._api, self._answers
        encoded: dict[tuple[int, bool, bool], bytes] = {}
        answered: list[_Watcher] = []
        now = self._clock()
        clock = time.perf_counter
        sends = 0
        for watcher in list(watchers):
            reply = watcher.reply
            assert reply is not None
            if watcher.task is None or reply.response is not None:
                continue  # awake already (it answers itself), or answered
            park = watcher.park
            request = park.request
            key = (park.caller, park.vm, request.target, park.last_etag,
                   request.headers.get("if-none-match"))
            result = answers.get(key)
            if result is None:
                result = answers[key] = api.resume(park, now, False)
            if isinstance(result, Park):
                continue  # its answer did not change: it stays parked, not even woken
            if result.refused is not None or result.stream is not None:
                _wake(watcher)  # not a plain answer: its task computes and sends it
                continue
            # Keyed by the answer's id: ``answers`` holds the answer meanwhile.
            wire_key = (id(result), reply.keep_alive, reply.head_only)
            data = encoded.get(wire_key)
            if data is None:
                data = encoded[wire_key] = reply.wire.encode(result, reply.keep_alive,
                                                             reply.head_only)
            try:
                sent = reply.sock.send(data)
            except OSError:  # a full buffer, or the peer is gone: left to the connection
                sent = 0
            reply.response, reply.data, reply.sent, reply.sent_at = \
                result, data, sent, clock()
            answered.append(watcher)
            sends += 1
            if sends % BATCH == 0:
                await checkpoint()
                answers = self._answers  # a change meanwhile started afresh
                now = self._clock()
        self.fanned_out += sends
        # Woken BATCH at a time: all at once, 10,000 watchers' tasks (the access record,
        # the next request) ran in one scheduler pass of 0.1-0.15 s, which every other
        # guest waited out. Their answers have left already, so only that work waits.
        try:
            for woken, watcher in enumerate(answered, 1):
                _wake(watcher)
                if woken % BATCH == 0:
                    await checkpoint()
        finally:
            for watcher in answered:  # cancelled meanwhile: none is left parked, answered
                _wake(watcher)


def _discard(index: dict[Any, dict[_Watcher, None]], key: Any, watcher: _Watcher) -> None:
    watchers = index.get(key)
    if watchers is not None:
        watchers.pop(watcher, None)
        if not watchers:
            del index[key]


def _wake(watcher: _Watcher) -> None:
    task = watcher.task
    if task is not None:
        watcher.task = None
        reschedule(task)
