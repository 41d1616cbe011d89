"""The server's ``RequestObserver``: metrics and the access line for each answered request."""

from __future__ import annotations

import sys

from imds_server._observe import AccessRecord

from ._metrics import TelemetryMetrics
from ._pipeline import LogPipeline


class TelemetryObserver:
    """Counts the request, then renders and queues its access line. Never raises: a
    telemetry bug must not fail a VM's request, so it is counted and reported once."""

    def __init__(self, metrics: TelemetryMetrics | None,
                 pipeline: LogPipeline | None = None) -> None:
        self._metrics = metrics
        self._pipeline = pipeline
        self.errors = 0

    def request(self, record: AccessRecord) -> None:
        try:
            if self._metrics is not None:
                self._metrics.observe(record)
            if self._pipeline is not None:
                self._pipeline.access(record)
        except Exception as error:
            self.errors += 1
            if self.errors == 1:
                print(f"imds-server: telemetry observer failed: {error!r}", file=sys.stderr)
