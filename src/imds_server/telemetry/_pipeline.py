"""One structured stream, fanned out to the paths: a bounded queue drained by a writer
thread into the cold file and the warm buffer.

Producers never block: the server's answers reach the queue as access lines rendered on
the loop in batches (``TelemetryObserver``: a source of pending lines, ``PendingLines``),
refusals as the fields of their immutable ``AccessRecord`` in one tuple
(``_jsonlog.queued``: not the record itself, which the GC tracks), component loggers as a
``Line`` rendered on their own thread (a ``LogRecord`` holds live arguments). When the
writer falls behind by ``queue_size`` entries, new ones are dropped and counted rather than
stalling the event loop.

The writer renders refusals' records and the few answers still pending when it wakes (at
most a batch: ``_observer.py`` says why the rest are rendered on the loop), joins and
writes. Measured in bench/bench_telemetry.py (docs/telemetry.md).

Why the writer sleeps ``WRITER_PERIOD`` after *every* batch, busy or not: a thread that
always has work wants the GIL back each time the event loop releases it for a system call,
and on a loaded 2-core host that ping-pong cost more than the lines themselves. Sleeping
makes it wake ~20 times a second and take a few hundred lines each time. (The stdlib
``QueueListener`` wakes per line and its handlers lock, format and write per line: worse
still.) The cold file still rotates through ``RotatingFileHandler``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from imds_server._observe import AccessRecord

from ._budget import WarmBudget
from ._cold import LEVELS, ColdFileHandler
from ._config import TelemetryConfig
from ._jsonlog import AccessRenderer, JsonFormatter, Line, QueuedAccess, RenderedAccess
from ._metrics import TelemetryMetrics
from ._spool import Spool
from ._warm import WarmBuffer

#: The loggers whose records the pipeline takes (components log under these).
COMPONENT_LOGGERS = ("imds_server", "imds_replica")
#: Seconds the writer sleeps between batches: lines reach files about this late at most.
WRITER_PERIOD = 0.05
#: Seconds between two lines reporting entries dropped because the queue was full (the
#: first drop is reported at once).
DROP_REPORT_INTERVAL = 10.0
#: Entries rendered and written per sink call (bounds the memory of one batch).
WRITER_BATCH = 8192
#: Added to the writer thread's nice value. Its work (a join, a write, a gzip at rotation)
#: mostly runs without the GIL, in parallel with the event loop, which on a busy core
#: means instead of it: the kernel then gives the loop ~90% of the core and the writer
#: the rest, so a rotation's 20 ms of compression does not stall answers for 10 ms. Ten
#: percent of a core is still ~50 times what the writer needs at 10,000 requests a second.
WRITER_NICE = 10
_INFO = logging.INFO
_LOGGER = "imds_server.telemetry"
#: Access lines rendered on the loop in one batch (``TelemetryObserver``): (their text,
#: one after the other, each ending in a newline; how many). A tuple of two, never
#: mistaken for a ``QueuedAccess`` (13) or a ``RenderedAccess`` (6).
LineChunk = tuple[str, int]
#: What the queue holds: access records to render, access lines rendered on the request
#: path (a chunk of them, the line alone, or with the fields the warm budget reads when
#: there is one), component lines.
Queued = QueuedAccess | RenderedAccess | LineChunk | str | Line


def _lower_priority(by: int) -> None:
    """Raise the calling thread's nice value (Linux: a thread is a task with its own)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
    except (AttributeError, OSError):
        pass  # not Linux, or not allowed: the writer runs at the loop's priority


class PendingLines(Protocol):
    """A producer that holds lines back to render them in batches: the pipeline has it
    queue them before anything else is queued (the file keeps their order), when the
    writer wakes, and before a flush or stop returns."""

    def pending(self) -> int: ...  # lines held back

    def queue_pending(self, wait: bool = True) -> None: ...  # any thread; never raises


class LineSink(Protocol):
    level: int

    #: ``lines`` end with "\n"; an item may hold several (a ``LineChunk``'s text):
    #: ``count`` is how many in all, when known.
    def write_lines(self, lines: list[str], count: int | None = None) -> None: ...

    def close(self) -> None: ...


class _StderrSink:
    """Where lines go without a log directory (containers collect stderr)."""

    level = logging.NOTSET

    def write_lines(self, lines: list[str], count: int | None = None) -> None:
        sys.stderr.write("".join(lines))
        sys.stderr.flush()

    def close(self) -> None:
        pass


class _QueueHandler(logging.Handler):
    """The handler component loggers get: renders on the caller's thread, never blocks."""

    def __init__(self, pipeline: LogPipeline) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self._pipeline = pipeline
        self._lines = {name: pipeline.metrics.log_lines.labels(name) for name in LEVELS}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        if self._pipeline.put(record.levelno, line, record.name):
            child = self._lines.get(record.levelname.lower())
            if child is not None:
                child.inc()


class LogPipeline:
    """Build, ``start()``, ``stop()``. ``access(record)`` is the request-path entry."""

    def __init__(self, config: TelemetryConfig, log_dir: Path | None,
                 metrics: TelemetryMetrics, *, warm: bool | None = None) -> None:
        """Without ``log_dir`` lines go to stderr (and no warm path: it spools on disk)."""
        self.config = config
        self.log_dir = log_dir
        self.metrics = metrics
        #: Access records (as ``_jsonlog.queued`` tuples) and component ``Line``s, in order.
        #: ``deque`` append and popleft are atomic under the GIL: no lock, no wake-up.
        self.queue: deque[Queued] = deque()
        self._limit = config.queue_size
        #: Entries the queue may hold; producers that append themselves check it and call
        #: ``dropped()`` beyond it (``TelemetryObserver.answered``).
        self.queue_limit = config.queue_size
        self._dropped = metrics.log_dropped.labels("queue-full")
        #: Lines beyond one per entry that chunks brought into the queue, and took out of
        #: it: ``queued()`` counts lines. Each is written by one thread at a time (the
        #: first under the observer's rendering lock, the second by the drainer).
        self._chunked_in = 0
        self._chunked_out = 0
        #: Producers holding lines back (``TelemetryObserver`` adds itself).
        self.pending_sources: list[PendingLines] = []
        self.handler = _QueueHandler(self)
        self.handler.setLevel(LEVELS[config.level])
        errors = metrics.log_errors
        self.cold: ColdFileHandler | None = None
        sinks: list[LineSink] = []
        if log_dir is not None:
            self.cold = ColdFileHandler(
                log_dir, config.cold, on_error=lambda path: errors.labels(path).inc(),
                on_lost=metrics.log_dropped.labels("cold-unwritable").inc,
                on_expired=self._expired)
            sinks.append(self.cold)
        else:
            sinks.append(_StderrSink())
        self.warm: WarmBuffer | None = None
        self.budget: WarmBudget | None = None
        use_warm = warm if warm is not None else config.warm.collector_url is not None
        if use_warm and log_dir is not None:
            spool = Spool(log_dir / "spool", config.warm.spool_max_bytes,
                          on_drop=self._spool_dropped,
                          on_quarantine=lambda r: metrics.spool_quarantined.labels(r).inc())
            self.warm = WarmBuffer(spool, cluster=config.cluster, machine=config.machine,
                                   max_records=config.warm.batch_max_records,
                                   level=LEVELS[config.warm.level], metrics=metrics)
            sinks.append(self.warm)
            w = config.warm
            self.budget = WarmBudget(
                level=LEVELS[w.level], sample_rate=w.sample_rate, slow_seconds=w.slow_seconds,
                logger_rate=w.logger_rate, logger_burst=w.logger_burst,
                max_line_bytes=w.max_line_bytes, budget_lines=w.budget_lines,
                interval=w.interval, budget_reserve=w.budget_reserve)
        self.sinks: tuple[LineSink, ...] = tuple(sinks)
        self._installed: list[logging.Logger] = []
        self._access_lines = metrics.log_lines.labels("info")
        self._unrenderable = metrics.log_dropped.labels("unrenderable")
        self.render_errors = 0
        self._renderer = AccessRenderer()  # the writer's: it alone renders access lines
        self._writer: threading.Thread | None = None
        self._stopping = False
        self._wake = threading.Event()  # set by stop() and flush(): no need to wait a period
        self._busy = False
        #: Entries dropped because the queue was full, and how many of them a line reported.
        self.queue_drops = 0
        self._drops_reported = 0
        self._drops_reported_at = -DROP_REPORT_INTERVAL

    def _expired(self, reason: str, files: int, lines: int) -> None:
        self.metrics.log_files_expired.labels(reason).inc(files)
        self.metrics.log_lines_expired.labels(reason).inc(lines)

    def _spool_dropped(self, batch: object) -> None:
        self.metrics.spool_dropped_batches.inc()
        self.metrics.spool_dropped_lines.inc(getattr(batch, "lines", 0))

    def start(self, loggers: Iterable[str] = COMPONENT_LOGGERS) -> None:
        try:
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            # Reported and counted; the server keeps serving, and each write retries.
            self.metrics.log_errors.labels("cold").inc()
            print(f"imds-server: cannot create log directory {self.log_dir}: {error}",
                  file=sys.stderr, flush=True)
        self._stopping = False
        self._wake.clear()
        self._writer = threading.Thread(target=self._write_forever, name="imds-log-writer",
                                        daemon=True)
        self._writer.start()
        for name in loggers:
            logger = logging.getLogger(name)
            logger.addHandler(self.handler)
            if logger.level == logging.NOTSET or logger.level > LEVELS[self.config.level]:
                logger.setLevel(LEVELS[self.config.level])
            self._installed.append(logger)

    def put(self, level: int, line: str, logger: str = "") -> bool:
        """Queue one rendered line (no newline); False (and counted) when the queue is full."""
        self._queue_pending()
        if self.queued() >= self._limit:
            self.dropped()
            return False
        self.queue.append(Line(level, line + "\n", logger))
        return True

    def queued(self) -> int:
        """Lines in the queue (a chunk counts its lines); the limit is ``queue_limit``."""
        return len(self.queue) + self._chunked_in - self._chunked_out

    def enqueue(self, items: list[Queued]) -> None:
        """Queue rendered access lines (a producer that checked ``queued()``)."""
        for item in items:
            if type(item) is tuple and len(item) == 2:
                self._chunked_in += item[1] - 1  # before the append: never under-counted
        self.queue.extend(items)

    def dropped(self, n: int = 1) -> None:
        """``n`` entries not queued: the queue was full. Counted in the metric at once, and
        reported in a line by the writer (``_report_drops``)."""
        self._dropped.inc(n)
        self.queue_drops += n

    def unrenderable(self, n: int = 1) -> None:
        """``n`` access lines that could not be rendered (a server bug): counted."""
        self._unrenderable.inc(n)

    def _queue_pending(self) -> None:
        for source in self.pending_sources:
            if source.pending():
                source.queue_pending()

    def _pending(self) -> int:
        return sum(source.pending() for source in self.pending_sources)

    def access(self, r: AccessRecord) -> None:
        """Queue one access record (the request path): a tuple and an append, never
        blocking. The tuple is ``_jsonlog.queued(r)``, inlined (a call costs as much)."""
        self._queue_pending()
        if self.queued() >= self._limit:
            self.dropped()
            return
        self.queue.append((r.time, r.request_id, r.bytes, r.seconds, r.method, r.path,
                           r.status, r.vm, r.caller, r.route, r.api_version, r.refused,
                           r.watch))

    def _write_forever(self) -> None:
        _lower_priority(WRITER_NICE)
        failures = 0
        while True:
            self._wake.wait(WRITER_PERIOD)
            self._wake.clear()
            stopping = self._stopping
            try:
                self._drain()
                self._report_drops(stopping)
            except Exception as error:  # a sink bug: keep writing what comes next
                failures += 1
                if failures == 1:
                    print(f"imds-server: log writer failed: {error!r}", file=sys.stderr,
                          flush=True)
            if stopping:
                return

    def _report_drops(self, final: bool = False) -> None:
        """A line (in the cold file, and on stderr) for entries dropped because the queue
        was full: the first at once, then at most every ``DROP_REPORT_INTERVAL``, and a last
        one on stop. Written now: the queue was just drained, so it has room."""
        drops = self.queue_drops
        new = drops - self._drops_reported
        now = time.monotonic()
        if not new or (not final and now - self._drops_reported_at < DROP_REPORT_INTERVAL):
            return
        self._drops_reported, self._drops_reported_at = drops, now
        message = (f"dropped {new} log lines: the writer fell behind and the queue was full "
                   f"(telemetry.queue_size = {self._limit}); {drops} since start")
        record = logging.LogRecord(_LOGGER, logging.WARNING, __file__, 0, message, None, None)
        record.fields = {"dropped": new, "dropped_total": drops, "reason": "queue-full"}
        self._write([Line(logging.WARNING, self.handler.format(record) + "\n", _LOGGER)])
        self.metrics.log_lines.labels("warning").inc()
        print(f"imds-server: {message}", file=sys.stderr, flush=True)

    def _drain(self) -> None:
        """Write everything queued now (pending lines first queued), ``WRITER_BATCH``
        entries at a time."""
        queue = self.queue
        self._busy = True
        try:
            self._queue_pending()
            while queue:
                n = min(len(queue), WRITER_BATCH)
                batch = [queue.popleft() for _ in range(n)]
                self._chunked_out += sum(item[1] - 1 for item in batch
                                         if type(item) is tuple and len(item) == 2)
                self._write(batch)
        finally:
            self._busy = False

    def _write(self, batch: list[Queued]) -> None:
        lines, levels, accessed, batch = self._render(batch)
        if accessed:
            self._access_lines.inc(accessed)
        if not lines:
            return
        # Every line: the access lines, and the component lines (one item each).
        count = accessed + sum(1 for item in batch if type(item) is Line) \
            if levels is not None else accessed
        lowest = _INFO if levels is None else min(levels)
        for sink in self.sinks:
            if sink is self.warm and self.budget is not None:
                self._write_warm(self.warm, self.budget, batch, lines, levels)
                continue
            level = sink.level
            if level <= lowest:
                chosen = lines
            else:
                assert levels is not None  # lowest > INFO only with component lines
                chosen = [line for line, lvl in zip(lines, levels, strict=True) if lvl >= level]
            if chosen is lines:
                sink.write_lines(lines, count)
            elif chosen:
                sink.write_lines(chosen)

    def _write_warm(self, warm: WarmBuffer, budget: WarmBudget,
                    batch: list[Queued], lines: list[str],
                    levels: list[int] | None) -> None:
        # With a warm budget the observer queues a line each with its fields, never chunks.
        chosen, counts = budget.choose(batch, lines, levels,  # type: ignore[arg-type]
                                       time.monotonic())
        m = self.metrics
        if counts.sampled_out:
            m.warm_sampled_out.inc(counts.sampled_out)
        if counts.throttled:
            m.warm_dropped.labels("throttled").inc(counts.throttled)
        if counts.over_budget:
            m.warm_dropped.labels("over-budget").inc(counts.over_budget)
        if counts.truncated:
            m.warm_truncated.inc(counts.truncated)
        if chosen:
            warm.write_lines(chosen)

    def _render(self, batch: list[Queued]
                ) -> tuple[list[str], list[int] | None, int, list[Queued]]:
        """(lines, each line's level or None when all are access lines (info), access
        lines rendered, the items rendered: ``lines[i]`` is of ``items[i]``)."""
        # The usual batch: access lines the request path rendered (in chunks, or a line
        # each), and nothing else.
        ready: list[str] = []
        append = ready.append
        accessed = 0
        for item in batch:
            if type(item) is tuple and len(item) == 2:
                append(item[0])
                accessed += item[1]
            elif type(item) is str:
                append(item)
                accessed += 1
            else:
                break
        else:
            return ready, None, accessed, batch
        if not ready:  # with the fields the warm budget reads
            ready = [item[0] for item in batch
                     if type(item) is tuple and len(item) == 6 and type(item[0]) is str]
            if len(ready) == len(batch):
                return ready, None, len(ready), batch
        try:
            return (*self._renderer.render(batch), batch)
        except Exception:
            pass
        # A record that does not render (a server bug) must neither stop the writer nor
        # take its batch with it: render one by one, drop and count the bad ones.
        lines: list[str] = []
        levels: list[int] = []
        rendered: list[Queued] = []
        accessed = 0
        for item in batch:
            try:
                line, _, count = self._renderer.render([item])
            except Exception as error:
                self._unrenderable.inc()
                self.render_errors += 1
                if self.render_errors == 1:
                    print(f"imds-server: cannot render access record {item!r}: {error!r}",
                          file=sys.stderr, flush=True)
                continue
            lines += line
            levels.append(item.level if isinstance(item, Line) else _INFO)
            rendered.append(item)
            accessed += count
        return lines, levels, accessed, rendered

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the writer has written every queued line (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._unwritten() and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.002)
        return not self._unwritten()

    def _unwritten(self) -> bool:
        # In the order the writer takes them: pending lines are queued, and the queue
        # drained, while it is busy (so neither is seen empty while it is in its hands).
        return bool(self._pending() or self.queue or self._busy)

    def stop(self) -> None:
        """Drain the queue, seal the warm buffer into the spool, close files."""
        for logger in self._installed:
            logger.removeHandler(self.handler)
        self._installed.clear()
        if self._writer is not None:
            self._stopping = True
            self._wake.set()
            self._writer.join()
            self._writer = None
        else:  # never started: what was queued is still written
            self._drain()
            self._report_drops(final=True)
        for sink in self.sinks:
            sink.close()  # the warm buffer seals what it holds into the spool
        self.handler.close()
