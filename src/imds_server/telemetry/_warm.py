"""The warm path: info-and-above lines batched into the spool, uploaded with retries.

``WarmBuffer`` is a logging handler behind the queue (the writer thread): it collects
rendered lines and seals them into a spooled batch when ``batch_max_records`` wait, or when
the uploader asks every ``interval``. ``Uploader.run`` is a trio task: it seals, then sends
spooled batches oldest first with tenacity's exponential backoff; a batch leaves the spool
only when the collector acknowledged it (stored or duplicate). When the collector stays
unreachable the rest waits for the next cycle, in order. Disk and gzip work happen in worker
threads, and the network is async, so uploading never blocks request handling.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import httpx
import tenacity
import trio

from ._config import WarmConfig
from ._jsonlog import split_lines
from ._metrics import TelemetryMetrics
from ._spool import CorruptBatch, Spool, SpooledBatch

log = logging.getLogger("imds_server.telemetry")
BATCHES_PATH = "/v1/batches"


class WarmBuffer(logging.Handler):
    def __init__(self, spool: Spool, *, cluster: str, machine: str, max_records: int,
                 level: int, metrics: TelemetryMetrics | None = None) -> None:
        super().__init__(level)
        self.spool = spool
        self.cluster = cluster
        self.machine = machine
        self.max_records = max_records
        self._metrics = metrics
        self._lines: list[str] = []
        self._seal_lock = threading.Lock()  # one seal at a time keeps batches in order

    def emit(self, record: logging.LogRecord) -> None:
        self.write_lines([self.format(record) + "\n"])

    def write_lines(self, lines: list[str], count: int | None = None) -> None:
        """Rendered lines (each ending in a newline), from the pipeline's writer; an item
        may hold several (``count`` in all)."""
        if count is not None and count != len(lines):
            lines = [line for item in lines for line in split_lines(item)]
        with self.lock:  # type: ignore[union-attr]
            self._lines.extend(line.rstrip("\n") for line in lines)
            full = len(self._lines) >= self.max_records
        if full:
            self.seal()

    def seal(self) -> SpooledBatch | None:
        """Write waiting lines as one spooled batch (from any thread). On a write error the
        lines stay buffered for the next seal, up to twice the batch size; beyond, the
        oldest are dropped and counted."""
        with self._seal_lock:
            with self.lock:  # type: ignore[union-attr]
                lines, self._lines = self._lines, []
            if not lines:
                return None
            try:
                return self.spool.add(lines, cluster=self.cluster, machine=self.machine)
            except OSError as error:
                with self.lock:  # type: ignore[union-attr]
                    self._lines[:0] = lines
                    excess = len(self._lines) - 2 * self.max_records
                    if excess > 0:
                        del self._lines[:excess]
                if self._metrics is not None:
                    self._metrics.log_errors.labels("spool").inc()
                    if excess > 0:
                        self._metrics.log_dropped.labels("spool-unwritable").inc(excess)
                log.error("cannot write warm-path spool %s: %s", self.spool.directory, error)
                return None

    def buffered(self) -> int:
        return len(self._lines)

    def close(self) -> None:
        self.seal()  # a clean stop keeps what was buffered, for the next start to send
        super().close()


class _Retry(Exception):
    """The collector answered something worth retrying (5xx, 408, 429)."""


class Uploader:
    """Sends spooled batches to ``config.collector_url``; run ``run`` in a nursery."""

    def __init__(self, config: WarmConfig, buffer: WarmBuffer,
                 metrics: TelemetryMetrics | None = None, *,
                 backoff: tuple[float, float] = (0.5, 30.0)) -> None:
        if config.collector_url is None:
            raise ValueError("no collector_url configured")
        self.config = config
        self.url = config.collector_url.rstrip("/") + BATCHES_PATH
        self.buffer = buffer
        self.spool = buffer.spool
        self.metrics = metrics
        self.backoff = backoff
        self.cycles = 0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with httpx.AsyncClient(timeout=self.config.timeout) as client:
            task_status.started()
            while True:
                await trio.sleep(self.config.interval)
                await self.cycle(client)

    async def cycle(self, client: httpx.AsyncClient) -> int:
        """Seal, then send what is spooled; returns how many batches left the spool."""
        self.cycles += 1
        await trio.to_thread.run_sync(self.buffer.seal)
        sent = 0
        for batch in await trio.to_thread.run_sync(self.spool.pending):
            try:
                body = await trio.to_thread.run_sync(self.spool.read, batch)
            except FileNotFoundError:
                continue  # dropped by the bound meanwhile (counted there)
            except CorruptBatch as error:
                log.error("spooled batch is corrupt, moved aside: %s", error)
                continue
            result = await self._send(client, batch, body)
            self._count(result)
            if result in ("stored", "duplicate"):
                await trio.to_thread.run_sync(self.spool.done, batch)
                sent += 1
                if self.metrics is not None:
                    self.metrics.upload_last_success.set(time.time())
            elif result == "rejected":
                await trio.to_thread.run_sync(self.spool.reject, batch, "rejected")
            else:
                break  # collector unreachable: keep order, try again next cycle
        return sent

    async def _send(self, client: httpx.AsyncClient, batch: SpooledBatch, body: bytes) -> str:
        headers = {
            "Content-Type": "application/x-ndjson", "Content-Encoding": "gzip",
            "X-Imds-Batch-Id": batch.batch_id, "X-Imds-Cluster": batch.cluster,
            "X-Imds-Machine": batch.machine, "X-Imds-Lines": str(batch.lines),
        }
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.config.attempts),
            wait=tenacity.wait_random_exponential(multiplier=self.backoff[0], max=self.backoff[1]),
            retry=tenacity.retry_if_exception_type((_Retry, httpx.TransportError)),
            sleep=trio.sleep, reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    response = await client.post(self.url, content=body, headers=headers)
                    if response.status_code in (408, 429) or response.status_code >= 500:
                        raise _Retry(f"HTTP {response.status_code}")
        except (_Retry, httpx.TransportError) as error:
            log.warning("collector %s unavailable, batch %s stays spooled: %s",
                        self.url, batch.batch_id, error or type(error).__name__)
            return "failed"
        if response.status_code == 200:
            return "duplicate"
        if 200 <= response.status_code < 300:
            return "stored"
        log.error("collector refused batch %s (HTTP %d: %s); moved to corrupt/",
                  batch.batch_id, response.status_code, response.text[:200])
        return "rejected"

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.uploads.labels(result).inc()
