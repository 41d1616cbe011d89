"""Admin routes telemetry adds: ``GET /metrics`` and ``GET /logs``.

Framework-neutral: a handler takes the query parameters and request headers and returns an
``AdminResponse`` whose body is bytes or an async iterator of chunks (streamed). The admin
listener maps method and path to these handlers (``TelemetryRoutes.routes()``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
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
    """Matching lines in chunks; file reads, gzip and the search happen in a worker thread.

    A search that finds little reads far between chunks: when the stream is closed (the
    client hung up, the server stops), the worker is abandoned and told to stop, and it
    does within a few hundred lines rather than at the end of the files."""
    stop = threading.Event()
    lines = read_lines(log_dir, flt, stop=stop.is_set)
    busy = threading.Lock()  # held by the worker while it runs the generator
    try:
        while True:
            chunk = await trio.to_thread.run_sync(_next_chunk, lines, busy,
                                                  thread_name="imds-grep",
                                                  abandon_on_cancel=True)
            if not chunk:
                return
            yield chunk
    finally:
        stop.set()
        if busy.acquire(blocking=False):  # no worker in it: close it here (files, quickly)
            try:
                lines.close()
            finally:
                busy.release()


def _next_chunk(lines: Generator[str, None, None], busy: threading.Lock) -> bytes:
    out = []
    with busy:
        for line in lines:
            out.append(line)
            if len(out) >= CHUNK_LINES:
                break
        else:
            lines.close()
    return "".join(out).encode()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None
