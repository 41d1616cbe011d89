"""The server's ``RequestObserver``: metrics and the access line for each answered request."""

from __future__ import annotations

import sys
from bisect import bisect_left
from typing import TYPE_CHECKING

from imds_server._observe import AccessRecord

from ._jsonlog import answer_segments, second_prefix
from ._metrics import TelemetryMetrics
from ._pipeline import LogPipeline
from ._requests import LATENCY_BUCKETS, Tally

if TYPE_CHECKING:
    from imds_server._request import Response

#: What the observer keeps of one answer (a response to one caller, target and method):
#: (response, caller, target, method, its tally (None without metrics), its body size,
#: the line's head, middle (before the size), middle with the size, tail, status, watch).
_Answer = tuple["Response", str, str, str, Tally | None, int, str, str, str, str, int, bool]

#: Answers whose metric slot and line segments are kept (``answered``); a full table is
#: dropped and refilled, so one-off answers (a fresh 304 each time) cost a refill only.
MAX_ANSWERS = 1024


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
    * The line is rendered here, on the loop, and queued as text, rather than by the
      writer thread: rendering there held the GIL for milliseconds per batch, and each
      time the loop released the GIL for a system call the writer took it and kept it
      until the switch interval (5 ms) ran out. That, not the CPU, was the p99 of the
      default server (bench/results/server.md). The writer now only joins and writes,
      which releases the GIL.
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
        self._second = -1
        self._prefix = ""
        self.errors = 0

    def request(self, record: AccessRecord) -> None:
        try:
            self._count(record)
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
            sized = sent == entry[5]
            if tally is not None:
                if sized:
                    tally.n += 1
                    duration = tally.duration
                    if duration is not None:
                        duration.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
                        duration.sum += seconds
                else:  # not the size this answer had before (a stream): counted in full
                    assert self._counts is not None
                    self._counts.count(tally.slot, seconds, sent)
            lines = self._lines
            if lines is not None:
                if len(lines) >= self._limit:
                    assert self._pipeline is not None
                    self._pipeline.dropped()
                    return
                second = int(time)
                if second != self._second:
                    self._second, self._prefix = second, second_prefix(second)
                if sized:
                    line = (f"{self._prefix}{int((time - second) * 1e6):06d}{entry[6]}"
                            f"{id_prefix}{id_number:x}{entry[8]}{seconds:.7f}{entry[9]}")
                else:
                    line = (f"{self._prefix}{int((time - second) * 1e6):06d}{entry[6]}"
                            f"{id_prefix}{id_number:x}{entry[7]}{sent},\"seconds\":"
                            f"{seconds:.7f}{entry[9]}")
                if self._fields:
                    lines.append((line, f"{id_prefix}{id_number:x}", entry[10], seconds,
                                  entry[11], None))
                else:
                    lines.append(line)
        except Exception as error:
            self._failed(error)

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
