"""The server's ``RequestObserver``: metrics and the access line for each answered request."""

from __future__ import annotations

import sys

from imds_server._observe import AccessRecord

from ._metrics import TelemetryMetrics
from ._pipeline import LogPipeline


def _skip(record: AccessRecord) -> None:
    pass


class TelemetryObserver:
    """Counts the request, then queues its record for the access line. Never raises: a
    telemetry bug must not fail a VM's request, so it is counted and reported once.

    Runs once per request on the event loop: both steps are bound methods picked here, so
    a request costs two direct calls (a dict-and-bisect count, a deque append)."""

    def __init__(self, metrics: TelemetryMetrics | None,
                 pipeline: LogPipeline | None = None) -> None:
        self._metrics = metrics
        self._pipeline = pipeline
        self._count = metrics.requests.observe if metrics is not None else _skip
        self._queue = pipeline.access if pipeline is not None else _skip
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

    def _failed(self, error: Exception) -> None:
        self.errors += 1
        if self.errors == 1:
            print(f"imds-server: telemetry observer failed: {error!r}", file=sys.stderr)
