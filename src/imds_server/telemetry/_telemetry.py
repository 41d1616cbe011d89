"""``Telemetry``: everything one server process runs for telemetry, built from its config.

The pieces an embedder wires::

    telemetry = Telemetry(config, log_dir=log_dir)  # not inside the durable log's directory
    FileLog(..., on_commit=telemetry.on_commit)
    Server(..., observer=telemetry.observer)        # and telemetry.routes() on the admin API
    await nursery.start(telemetry.run)              # writer thread, uploader, pruning
    telemetry.watch_server(server.statistics)       # scrape-time collector
    telemetry.watch_replica(replica)                # scrape-time collector

``imds-server serve`` does exactly this through ``_serving.for_server(config)`` (logs in
``<data-dir>.logs`` unless ``telemetry.log_dir`` says otherwise).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from imds_server._observe import NullObserver, RequestObserver

from ._admin import Handler, TelemetryRoutes
from ._config import TelemetryConfig
from ._metrics import ReplicaCollector, ServerCollector, TelemetryMetrics
from ._observer import TelemetryObserver
from ._pipeline import LogPipeline
from ._warm import Uploader

log = logging.getLogger("imds_server.telemetry")
PRUNE_INTERVAL = 600.0


class Telemetry:
    def __init__(self, config: TelemetryConfig, *, log_dir: Path | None,
                 known_api_versions: tuple[str, ...] | None = None,
                 process_metrics: bool = True) -> None:
        self.config = config
        self.log_dir = config.log_dir or log_dir
        kwargs = {} if known_api_versions is None else {"known_api_versions": known_api_versions}
        self.metrics = TelemetryMetrics(process=process_metrics, **kwargs)
        self.pipeline = LogPipeline(config, self.log_dir, self.metrics)
        self.observer: RequestObserver = (
            TelemetryObserver(self.metrics if config.metrics else None,
                              self.pipeline if config.access_log else None)
            if config.metrics or config.access_log else NullObserver())
        self.uploader = (Uploader(config.warm, self.pipeline.warm, self.metrics)
                         if self.pipeline.warm is not None else None)

    def watch_replica(self, replica: Any) -> None:
        self.metrics.register(ReplicaCollector(replica))

    def watch_server(self, statistics: Callable[[], Any]) -> None:
        self.metrics.register(ServerCollector(statistics))

    def on_commit(self, records_in_group: int, fsync_seconds: float) -> None:
        self.metrics.on_commit(records_in_group, fsync_seconds)

    def routes(self) -> dict[tuple[str, str], Handler]:
        """(method, path) → handler: ``GET /metrics``, and ``GET /logs`` with a log dir."""
        return TelemetryRoutes(self.metrics, self.log_dir).routes()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Start the writer thread (and uploader); on cancel, drain and seal to the spool."""
        self.pipeline.start()
        try:
            async with trio.open_nursery() as nursery:
                if self.uploader is not None:
                    await nursery.start(self.uploader.run)
                nursery.start_soon(self._prune_forever)
                task_status.started()
        finally:
            # The queue holds at most queue_size short lines; draining it is quick, and it
            # must finish even though we are being cancelled.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.pipeline.stop)

    async def _prune_forever(self) -> None:
        while True:
            await trio.sleep(PRUNE_INTERVAL)
            cold = self.pipeline.cold
            if cold is None:
                return
            removed = await trio.to_thread.run_sync(cold.prune)
            if removed:
                log.info("deleted %d log files past retention", removed)
