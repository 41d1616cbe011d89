"""Admin routes telemetry adds: ``GET /metrics`` and ``GET /logs``.

Framework-neutral: a handler takes the query parameters and request headers and returns an
``AdminResponse`` whose body is bytes or an async iterator of chunks (streamed). The admin
listener maps method and path to these handlers (``TelemetryRoutes.routes()``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path

import attrs
import trio

from imds_replica import ClientError

from ._cold import LogFilter, read_lines
from ._metrics import TelemetryMetrics

NDJSON = "application/x-ndjson"
CHUNK_LINES = 512


@attrs.frozen
class AdminResponse:
    status: int
    content_type: str
    body: bytes | AsyncIterator[bytes]
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Mapping[str, str], Mapping[str, str]], Awaitable[AdminResponse]]


class TelemetryRoutes:
    def __init__(self, metrics: TelemetryMetrics, log_dir: Path | None) -> None:
        self.metrics = metrics
        self.log_dir = log_dir

    def routes(self) -> dict[tuple[str, str], Handler]:
        routes: dict[tuple[str, str], Handler] = {("GET", "/metrics"): self.get_metrics}
        if self.log_dir is not None:
            routes["GET", "/logs"] = self.get_logs
        return routes

    async def get_metrics(self, query: Mapping[str, str],
                          headers: Mapping[str, str]) -> AdminResponse:
        # Rendered on the trio thread on purpose: collectors read the replica and server,
        # which are not thread-safe. A scrape costs about a millisecond.
        body, content_type = self.metrics.exposition(_header(headers, "accept"))
        return AdminResponse(200, content_type, body)

    async def get_logs(self, query: Mapping[str, str],
                       headers: Mapping[str, str]) -> AdminResponse:
        try:
            flt = LogFilter.from_query(query)
        except ClientError as error:
            # JSON like every other admin answer: {"error": "..."}.
            return AdminResponse(400, "application/json; charset=utf-8",
                                 json.dumps({"error": error.message}).encode())
        assert self.log_dir is not None  # the route exists only with a log directory
        return AdminResponse(200, NDJSON, stream_lines(self.log_dir, flt))


async def stream_lines(log_dir: Path, flt: LogFilter) -> AsyncIterator[bytes]:
    """Matching lines in chunks; file reads and gzip happen in a worker thread."""
    lines = read_lines(log_dir, flt)
    try:
        while True:
            chunk = await trio.to_thread.run_sync(_next_chunk, lines)
            if not chunk:
                return
            yield chunk
    finally:
        await trio.to_thread.run_sync(lines.close)


def _next_chunk(lines: Iterator[str]) -> bytes:
    out = []
    for line in lines:
        out.append(line)
        if len(out) >= CHUNK_LINES:
            break
    return "".join(out).encode()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None
