"""One structured stream, fanned out to the paths: a bounded queue drained by the standard
``QueueListener`` thread into the cold file and the warm buffer.

Producers (the request path, component loggers) only render a line and put it on the queue,
without blocking: when the writer falls behind by ``queue_size`` lines, new lines are
dropped and counted rather than stalling the event loop.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from imds_server._observe import AccessRecord

from ._cold import LEVELS, ColdFileHandler
from ._config import TelemetryConfig
from ._jsonlog import (
    ACCESS_LOGGER,
    JsonFormatter,
    PassThroughFormatter,
    RenderedRecord,
    render_access,
)
from ._metrics import TelemetryMetrics
from ._spool import Spool
from ._warm import WarmBuffer

#: The loggers whose records the pipeline takes (components log under these).
COMPONENT_LOGGERS = ("imds_server", "imds_replica")


class _QueueHandler(logging.handlers.QueueHandler):
    """Renders on the producer's thread; never blocks; counts what it must drop."""

    def __init__(self, q: queue.Queue[logging.LogRecord], metrics: TelemetryMetrics) -> None:
        super().__init__(q)
        self.setFormatter(JsonFormatter())
        self._metrics = metrics
        self._lines = {name: metrics.log_lines.labels(name) for name in LEVELS}

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if isinstance(record, RenderedRecord):
            return record
        return RenderedRecord(record.name, record.levelno, self.format(record), record.created)

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self._metrics.log_dropped.labels("queue-full").inc()
            return
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
        self.queue: queue.Queue[logging.LogRecord] = queue.Queue(config.queue_size)
        self.handler = _QueueHandler(self.queue, metrics)
        self.handler.setLevel(LEVELS[config.level])
        errors = metrics.log_errors
        self.cold: ColdFileHandler | None = None
        handlers: list[logging.Handler] = []
        if log_dir is not None:
            self.cold = ColdFileHandler(log_dir, config.cold,
                                        on_error=lambda path: errors.labels(path).inc())
            handlers.append(self.cold)
        else:
            stderr = logging.StreamHandler(sys.stderr)
            stderr.setFormatter(PassThroughFormatter())
            handlers.append(stderr)
        self.warm: WarmBuffer | None = None
        use_warm = warm if warm is not None else config.warm.collector_url is not None
        if use_warm and log_dir is not None:
            spool = Spool(log_dir / "spool", config.warm.spool_max_bytes,
                          on_drop=self._dropped,
                          on_quarantine=lambda r: metrics.spool_quarantined.labels(r).inc())
            self.warm = WarmBuffer(spool, cluster=config.cluster, machine=config.machine,
                                   max_records=config.warm.batch_max_records,
                                   level=LEVELS[config.warm.level], metrics=metrics)
            handlers.append(self.warm)
        self.listener = logging.handlers.QueueListener(self.queue, *handlers,
                                                       respect_handler_level=True)
        self._installed: list[logging.Logger] = []
        self._access_lines = metrics.log_lines.labels("info")
        self._started = False

    def _dropped(self, batch: object) -> None:
        self.metrics.spool_dropped_batches.inc()
        self.metrics.spool_dropped_lines.inc(getattr(batch, "lines", 0))

    def start(self, loggers: Iterable[str] = COMPONENT_LOGGERS) -> None:
        try:
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            # Reported and counted; the server keeps serving, and each line retries.
            self.metrics.log_errors.labels("cold").inc()
            print(f"imds-server: cannot create log directory {self.log_dir}: {error}",
                  file=sys.stderr, flush=True)
        self.listener.start()
        self._started = True
        for name in loggers:
            logger = logging.getLogger(name)
            logger.addHandler(self.handler)
            if logger.level == logging.NOTSET or logger.level > LEVELS[self.config.level]:
                logger.setLevel(LEVELS[self.config.level])
            self._installed.append(logger)

    def access(self, record: AccessRecord) -> None:
        """Render one access line here (the request path) and queue it; never blocks."""
        line = render_access(record)
        try:
            self.queue.put_nowait(RenderedRecord(ACCESS_LOGGER, logging.INFO, line,
                                                 record.time))
        except queue.Full:
            self.metrics.log_dropped.labels("queue-full").inc()
            return
        self._access_lines.inc()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the writer thread has taken every queued line (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        for handler in self.listener.handlers:
            handler.flush()
        return self.queue.unfinished_tasks == 0

    def stop(self) -> None:
        """Drain the queue, seal the warm buffer into the spool, close files."""
        for logger in self._installed:
            logger.removeHandler(self.handler)
        self._installed.clear()
        if self._started:
            self.listener.stop()
            self._started = False
        for handler in self.listener.handlers:
            handler.close()  # the warm buffer seals what it holds into the spool
        self.handler.close()
