"""The server's ``RequestObserver``: metrics and the access line for each answered request."""

from __future__ import annotations

import sys
import threading
from bisect import bisect_left
from collections import deque
from typing import TYPE_CHECKING

from imds_server._observe import AccessRecord

from ._jsonlog import answer_segments, second_prefix
from ._metrics import TelemetryMetrics
from ._pipeline import LogPipeline, Queued
from ._requests import LATENCY_BUCKETS, Tally

if TYPE_CHECKING:
    from imds_server._request import Response

#: What the observer keeps of one answer (a response to one caller, target and method):
#: (response, caller, target, method, its tally (None without metrics), its body size,
#: the line's head, middle (before the size), middle with the size, tail, status, watch).
_Answer = tuple["Response", str, str, str, Tally | None, int, str, str, str, str, int, bool]

#: One answered request whose line is not rendered yet: (time, id prefix, id number, its
#: ``_Answer``, seconds, bytes sent).
_Pending = tuple[float, str, int, _Answer, float, int]

#: Answers whose metric slot and line segments are kept (``answered``); a full table is
#: dropped and refilled, so one-off answers (a fresh 304 each time) cost a refill only.
MAX_ANSWERS = 1024
#: Requests whose lines ``answered`` renders in one pass. Rendering a line per request cost
#: ~4x as much in the server as in a tight loop (its formatting code and data are evicted
#: by the request's own work in between); 32 at once cost about what a tight loop does,
#: and hold at most 32 small tuples back (bench/bench_telemetry.py, docs/telemetry.md).
RENDER_BATCH = 32
#: "000" ... "999" (the µs of a line's time, three digits at a time), and the hex of a
#: byte with and without its leading zero (the last two digits of a request id's number).
_DIGITS3 = tuple(f"{i:03d}" for i in range(1000))
_HEX2 = tuple(f"{i:02x}" for i in range(256))
_HEX1 = tuple(f"{i:x}" for i in range(256))


def _skip(record: AccessRecord) -> None:
    pass


class TelemetryObserver:
    """Counts the request, then queues its access line. Never raises: a telemetry bug must
    not fail a VM's request, so it is counted and reported once.

    Runs once per request on the event loop. The server calls ``answered`` for every answer
    that is not a refusal (nearly all of them), ``request`` with an ``AccessRecord`` for
    the rest. ``answered`` is the cheap one; why it is shaped so:

    * The server reuses one immutable ``Response`` per answer and second, so everything of
      a request's metrics and line but its time, id, size and duration is fixed by (the
      response, the caller, the path, the method): a table keyed by the response's id
      keeps the pre-bound metric slot and the pre-rendered line segments (JSON-escaped
      once) of each. A request then costs one lookup, a count, and one f-string.
    * The line is rendered on the loop and queued as text, rather than by the writer
      thread: rendering there held the GIL for milliseconds per batch, and each time the
      loop released the GIL for a system call the writer took it and kept it until the
      switch interval (5 ms) ran out. That, not the CPU, was the p99 of the default
      server (bench/results/server.md). The writer only joins and writes, which releases
      the GIL.
    * But not one line per request: ``answered`` keeps the request's few numbers
      (``_Pending``) and renders ``RENDER_BATCH`` of them in one pass, which costs a
      fraction of rendering each between two requests. What is left when the loop goes
      quiet (fewer than a batch) the writer renders (``queue_pending``: at most a batch,
      so tens of µs of GIL), before it writes; so do ``request``, the pipeline's
      ``put``/``access``, ``flush`` and ``stop`` before they queue or wait, so lines reach
      the queue in the order the requests were answered, as before. One lock orders the
      two threads' rendering; the loop never waits for it (if the writer holds it, the
      next request renders).
    """

    def __init__(self, metrics: TelemetryMetrics | None,
                 pipeline: LogPipeline | None = None) -> None:
        self._metrics = metrics
        self._pipeline = pipeline
        self._count = metrics.requests.observe if metrics is not None else _skip
        self._queue = pipeline.access if pipeline is not None else _skip
        self._counts = metrics.requests if metrics is not None else None
        if self._counts is not None:
            self._counts.before_collect.append(self._fold)
        self._lines = pipeline.queue if pipeline is not None else None
        self._limit = pipeline.queue_limit if pipeline is not None else 0
        #: Queue the line alone (a string), or with the fields the warm path's budget
        #: reads (``RenderedAccess``): only a pipeline with a budget needs them.
        self._fields = pipeline is not None and pipeline.budget is not None
        #: id(response) → ``_Answer``: the response is held so that its id is not reused
        #: meanwhile.
        self._answers: dict[int, _Answer] = {}
        #: Answered requests whose lines are not rendered yet (oldest first), and what
        #: renders them one thread at a time (the loop, or the writer when it is quiet).
        self._pending: deque[_Pending] = deque()
        self._rendering = threading.Lock()
        self._second = -1  # the time prefix of the last second rendered (``_rendering``)
        self._prefix = ""
        self._fast = False  # ``_second`` > 0: its lines' µs come from ``_DIGITS3``
        #: The last id's number but its low byte, in hex, and the low byte's table.
        self._high = -1
        self._high_text = ""
        self._low = _HEX1
        self.errors = 0
        if pipeline is not None:
            pipeline.pending_sources.append(self)

    def request(self, record: AccessRecord) -> None:
        try:
            self._count(record)
            if self._pending:
                self.queue_pending()  # its line after those answered before it
            self._queue(record)
        except Exception as error:
            self._failed(error)

    def count(self, record: AccessRecord) -> None:
        """Count without an access line: a refusal the server logs in aggregate."""
        try:
            self._count(record)
        except Exception as error:
            self._failed(error)

    def answered(self, time: float, id_prefix: str, id_number: int, caller: str,
                 method: str, target: str, response: Response, sent: int,
                 seconds: float) -> None:
        """An answer that is not a refusal (``response.refused`` is None): the same count
        and line as ``request`` of its ``AccessRecord`` (``_observe.AnswerObserver``).
        ``id_prefix`` must need no JSON escaping (the server's is hex digits and
        dashes)."""
        try:
            entry = self._answers.get(id(response))
            if entry is None or entry[0] is not response or entry[1] != caller \
                    or entry[2] != target or entry[3] != method:
                entry = self._entry(caller, method, target, response, sent)
            tally = entry[4]
            if tally is not None:
                if sent == entry[5]:
                    tally.n += 1
                    duration = tally.duration
                    if duration is not None:
                        duration.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
                        duration.sum += seconds
                else:  # not the size this answer had before (a stream): counted in full
                    assert self._counts is not None
                    self._counts.count(tally.slot, seconds, sent)
            if self._lines is not None:
                pending = self._pending
                pending.append((time, id_prefix, id_number, entry, seconds, sent))
                if len(pending) >= RENDER_BATCH:
                    self.queue_pending(wait=False)
        except Exception as error:
            self._failed(error)

    def pending(self) -> int:
        """Answered requests whose lines are not queued yet (at most about a batch)."""
        return len(self._pending)

    def queue_pending(self, wait: bool = True) -> None:
        """Render the pending lines and queue them, in order (any thread). Over the
        pipeline's queue limit the newest are dropped and counted, as one at a time would
        be. ``wait=False``: do nothing if another thread is rendering them right now."""
        if not self._rendering.acquire(wait):
            return
        try:
            pending, lines = self._pending, self._lines
            n = len(pending)
            if not n or lines is None:
                return
            items = [pending.popleft() for _ in range(n)]  # appends meanwhile stay pending
            assert self._pipeline is not None
            room = self._limit - self._pipeline.queued()
            if room < n:
                assert self._pipeline is not None
                self._pipeline.dropped(n - max(room, 0))
                if room <= 0:
                    return
                del items[room:]
            try:
                rendered = self._render(items)
            except Exception:
                assert self._pipeline is not None
                self._pipeline.unrenderable(len(items))  # counted, never silent
                raise
            self._pipeline.enqueue(rendered)
        except Exception as error:
            self._failed(error)
        finally:
            self._rendering.release()

    def _render(self, items: list[_Pending]) -> list[Queued]:
        """The access lines of ``items``: byte for byte ``_jsonlog.access_line`` of their
        records (a property test checks), as one ``LineChunk`` (or, for a warm budget, one
        ``RenderedAccess`` per line). Under ``_rendering``."""
        if self._fields:
            return self._render_fields(items)
        # One join over the whole batch rather than one f-string per line: the lines are
        # joined again by the writer anyway, and building each line's string first cost a
        # third of the rendering. The clock's µs and the id's hex come from tables (a
        # format spec per field cost more than the rest of the line).
        second, prefix, fast = self._second, self._prefix, self._fast
        high, high_text, low = self._high, self._high_text, self._low
        t3 = _DIGITS3
        parts: list[str] = []
        extend = parts.extend
        for time, id_prefix, id_number, entry, seconds, sent in items:
            s = int(time)
            if s != second:
                second, prefix = s, second_prefix(s)
                fast = s > 0  # then 0 <= time - s < 1: six digits, none negative
            if fast:
                us = int((time - s) * 1e6)
                ms, ms_us = t3[us // 1000], t3[us % 1000]
            else:
                ms, ms_us = f"{int((time - s) * 1e6):06d}", ""
            h = id_number >> 8
            if h != high:
                if h < 0:
                    raise ValueError(f"request id number {id_number} < 0")
                high, high_text, low = h, f"{h:x}" if h else "", _HEX2 if h else _HEX1
            if sent == entry[5]:
                extend((prefix, ms, ms_us, entry[6], id_prefix, high_text, low[id_number & 255],
                        entry[8], f"{seconds:.7f}", entry[9]))
            else:
                extend((prefix, ms, ms_us, entry[6], id_prefix, high_text, low[id_number & 255],
                        entry[7], f"{sent}", ',"seconds":', f"{seconds:.7f}", entry[9]))
        self._second, self._prefix, self._fast = second, prefix, fast
        self._high, self._high_text, self._low = high, high_text, low
        return [("".join(parts), len(items))]

    def _render_fields(self, items: list[_Pending]) -> list[Queued]:
        """``_render`` for a pipeline with a warm budget: a line per request, with the
        fields the budget reads."""
        second, prefix = self._second, self._prefix
        out: list[str] = []
        append = out.append
        for time, id_prefix, id_number, entry, seconds, sent in items:
            s = int(time)
            if s != second:
                second, prefix = s, second_prefix(s)
            if sent == entry[5]:
                append(f"{prefix}{int((time - s) * 1e6):06d}{entry[6]}"
                       f"{id_prefix}{id_number:x}{entry[8]}{seconds:.7f}{entry[9]}")
            else:
                append(f"{prefix}{int((time - s) * 1e6):06d}{entry[6]}"
                       f"{id_prefix}{id_number:x}{entry[7]}{sent},\"seconds\":"
                       f"{seconds:.7f}{entry[9]}")
        self._second, self._prefix = second, prefix
        self._fast = second > 0
        fields: list[Queued] = [
            (line, f"{item[1]}{item[2]:x}", item[3][10], item[4], item[3][11], None)
            for line, item in zip(out, items, strict=True)]
        return fields

    def _entry(self, caller: str, method: str, target: str, response: Response, sent: int
               ) -> _Answer:
        status, watch = int(response.status), bool(response.watch)
        path = target.partition("?")[0]
        counts = self._counts
        tally = (Tally(counts.slot(response.route, response.api_version, status, watch), sent)
                 if counts is not None else None)
        head, middle, tail = answer_segments(method, path, status, response.vm, caller,
                                             response.route, response.api_version, watch)
        entry = (response, caller, target, method, tally, sent, head, middle,
                 f'{middle}{sent},"seconds":', tail, status, watch)
        answers = self._answers
        if len(answers) >= MAX_ANSWERS:
            self._fold()
            answers.clear()
        old = answers.get(id(response))
        if old is not None and old[4] is not None:
            assert counts is not None
            counts.fold(old[4])
        answers[id(response)] = entry
        return entry

    def _fold(self) -> None:
        """Every tally's counts into the metrics (before a scrape, or a clear)."""
        counts = self._counts
        if counts is None:
            return
        for entry in self._answers.values():
            if entry[4] is not None:
                counts.fold(entry[4])

    def _failed(self, error: Exception) -> None:
        self.errors += 1
        if self.errors == 1:
            print(f"imds-server: telemetry observer failed: {error!r}", file=sys.stderr)
