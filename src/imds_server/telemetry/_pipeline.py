"""One structured stream, fanned out to the paths: a bounded queue of rendered lines drained
by a writer thread into the cold file and the warm buffer.

Producers (the request path, component loggers) render a line and put ``(level, line)`` on
the queue, without blocking: when the writer falls behind by ``queue_size`` lines, new lines
are dropped and counted rather than stalling the event loop.

Why not the stdlib ``QueueListener``: it wakes per line and its handlers lock, format and
write (and seek) per line; on these 2-core machines that thread's GIL traffic cost the event
loop more than half its read-path throughput (bench/bench_telemetry.py). The writer here
wakes every ``WRITER_PERIOD``, takes every waiting line, and each sink writes the lot with
one system call (the cold file still rotates through ``RotatingFileHandler``).
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from imds_server._observe import AccessRecord

from ._cold import LEVELS, ColdFileHandler
from ._config import TelemetryConfig
from ._jsonlog import JsonFormatter, render_access
from ._metrics import TelemetryMetrics
from ._spool import Spool
from ._warm import WarmBuffer

#: The loggers whose records the pipeline takes (components log under these).
COMPONENT_LOGGERS = ("imds_server", "imds_replica")
#: Seconds the writer sleeps when the queue is empty: lines reach files this late at most.
WRITER_PERIOD = 0.05
_INFO = logging.INFO


class LineSink(Protocol):
    level: int

    def write_lines(self, lines: list[str]) -> None: ...  # lines end with "\n"

    def close(self) -> None: ...


class _StderrSink:
    """Where lines go without a log directory (containers collect stderr)."""

    level = logging.NOTSET

    def write_lines(self, lines: list[str]) -> None:
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
        if self._pipeline.put(record.levelno, line):
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
        self.queue: queue.SimpleQueue[tuple[int, str]] = queue.SimpleQueue()
        self._limit = config.queue_size
        self._dropped = metrics.log_dropped.labels("queue-full")
        self.handler = _QueueHandler(self)
        self.handler.setLevel(LEVELS[config.level])
        errors = metrics.log_errors
        self.cold: ColdFileHandler | None = None
        sinks: list[LineSink] = []
        if log_dir is not None:
            self.cold = ColdFileHandler(
                log_dir, config.cold, on_error=lambda path: errors.labels(path).inc(),
                on_lost=metrics.log_dropped.labels("cold-unwritable").inc)
            sinks.append(self.cold)
        else:
            sinks.append(_StderrSink())
        self.warm: WarmBuffer | None = None
        use_warm = warm if warm is not None else config.warm.collector_url is not None
        if use_warm and log_dir is not None:
            spool = Spool(log_dir / "spool", config.warm.spool_max_bytes,
                          on_drop=self._spool_dropped,
                          on_quarantine=lambda r: metrics.spool_quarantined.labels(r).inc())
            self.warm = WarmBuffer(spool, cluster=config.cluster, machine=config.machine,
                                   max_records=config.warm.batch_max_records,
                                   level=LEVELS[config.warm.level], metrics=metrics)
            sinks.append(self.warm)
        self.sinks: tuple[LineSink, ...] = tuple(sinks)
        self._installed: list[logging.Logger] = []
        self._access_lines = metrics.log_lines.labels("info")
        self._access_count = 0
        self._access_counted = 0
        self._writer: threading.Thread | None = None
        self._stopping = threading.Event()
        self._busy = False

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
        self._stopping.clear()
        self._writer = threading.Thread(target=self._write_forever, name="imds-log-writer",
                                        daemon=True)
        self._writer.start()
        for name in loggers:
            logger = logging.getLogger(name)
            logger.addHandler(self.handler)
            if logger.level == logging.NOTSET or logger.level > LEVELS[self.config.level]:
                logger.setLevel(LEVELS[self.config.level])
            self._installed.append(logger)

    def put(self, level: int, line: str) -> bool:
        """Queue one rendered line; False (and counted) when the queue is full."""
        if self.queue.qsize() >= self._limit:
            self._dropped.inc()
            return False
        self.queue.put((level, line))
        return True

    def access(self, record: AccessRecord) -> None:
        """Render one access line here (the request path) and queue it; never blocks."""
        if self.queue.qsize() >= self._limit:
            self._dropped.inc()
            return
        self.queue.put((_INFO, render_access(record)))
        self._access_count += 1  # added to the metric by the writer, once per batch

    def _write_forever(self) -> None:
        while True:
            self._busy = True
            batch: list[tuple[int, str]] = []
            try:
                while len(batch) < 10_000:
                    batch.append(self.queue.get_nowait())
            except queue.Empty:
                pass
            if batch:
                self._write(batch)
            self._busy = False
            if not batch:
                if self._stopping.is_set():
                    return
                self._stopping.wait(WRITER_PERIOD)

    def _write(self, batch: list[tuple[int, str]]) -> None:
        counted = self._access_count  # a racy read is fine: the rest is counted next time
        self._access_lines.inc(counted - self._access_counted)
        self._access_counted = counted
        for sink in self.sinks:
            level = sink.level
            lines = [line + "\n" for lineno, line in batch if lineno >= level]
            if lines:
                sink.write_lines(lines)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the writer has written every queued line (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while (self.queue.qsize() or self._busy) and time.monotonic() < deadline:
            time.sleep(0.002)
        return not (self.queue.qsize() or self._busy)

    def stop(self) -> None:
        """Drain the queue, seal the warm buffer into the spool, close files."""
        for logger in self._installed:
            logger.removeHandler(self.handler)
        self._installed.clear()
        if self._writer is not None:
            self._stopping.set()
            self._writer.join()
            self._writer = None
        else:  # never started: what was queued is still written
            batch: list[tuple[int, str]] = []
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            self._write(batch)
        for sink in self.sinks:
            sink.close()  # the warm buffer seals what it holds into the spool
        self.handler.close()
