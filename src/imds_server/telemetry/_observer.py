"""The server's ``RequestObserver``: metrics and the access line for each answered request."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from imds_server._observe import AccessRecord

from ._jsonlog import answer_segments, second_prefix
from ._metrics import TelemetryMetrics
from ._pipeline import LogPipeline
from ._requests import Slot

if TYPE_CHECKING:
    from imds_server._request import Response

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
        self._lines = pipeline.queue if pipeline is not None else None
        self._limit = pipeline.queue_limit if pipeline is not None else 0
        #: id(response) → (response, caller, path, method, slot, head, middle, tail, status,
        #: watch): the response is held so that its id is not reused meanwhile.
        self._answers: dict[int, tuple[Response, str, str, str, Slot | None, str, str, str,
                                       int, bool]] = {}
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

    def answered(self, time: float, request_id: str, caller: str, method: str, path: str,
                 response: Response, sent: int, seconds: float) -> None:
        """An answer that is not a refusal (``response.refused`` is None): the same count
        and line as ``request`` of its ``AccessRecord``. ``request_id`` must need no JSON
        escaping (the server's own ids are hex digits and dashes)."""
        try:
            entry = self._answers.get(id(response))
            if entry is None or entry[0] is not response or entry[1] != caller \
                    or entry[2] != path or entry[3] != method:
                entry = self._entry(caller, method, path, response)
            counts = self._counts
            if counts is not None:
                slot = entry[4]
                assert slot is not None
                counts.count(slot, seconds, sent)
            lines = self._lines
            if lines is not None:
                if len(lines) >= self._limit:
                    assert self._pipeline is not None
                    self._pipeline.dropped()
                    return
                second = int(time)
                if second != self._second:
                    self._second, self._prefix = second, second_prefix(second)
                lines.append((
                    f"{self._prefix}{int((time - second) * 1e6):06d}{entry[5]}{request_id}"
                    f'{entry[6]}{sent},"seconds":{seconds:.7f}{entry[7]}',
                    request_id, entry[8], seconds, entry[9], None))
        except Exception as error:
            self._failed(error)

    def _entry(self, caller: str, method: str, path: str, response: Response
               ) -> tuple[Response, str, str, str, Slot | None, str, str, str, int, bool]:
        status, watch = int(response.status), bool(response.watch)
        slot = (self._counts.slot(response.route, response.api_version, status, watch)
                if self._counts is not None else None)
        head, middle, tail = answer_segments(method, path, status, response.vm, caller,
                                             response.route, response.api_version, watch)
        entry = (response, caller, path, method, slot, head, middle, tail, status, watch)
        if len(self._answers) >= MAX_ANSWERS:
            self._answers.clear()
        self._answers[id(response)] = entry
        return entry

    def _failed(self, error: Exception) -> None:
        self.errors += 1
        if self.errors == 1:
            print(f"imds-server: telemetry observer failed: {error!r}", file=sys.stderr)
