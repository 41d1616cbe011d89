"""Telemetry for ``imds-server serve``: built from the server's configuration, mounted on
its extension points (``observer``, ``extra_routes``, the log's ``on_commit``).

    telemetry = for_server(config)                       # raises ConfigError
    server = Server(config, **telemetry.server_arguments(config))
    await nursery.start(telemetry.run)                   # before server.run
    telemetry.watch(server)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imds_server._request import Request, Response, error, parse_query
from imds_server._storage import open_log
from imds_server._versions import SCHEDULED_EVENTS_KNOWN

from ._admin import Handler
from ._config import TelemetryConfig
from ._stream_metrics import StreamSourceCollector
from ._telemetry import Telemetry

if TYPE_CHECKING:
    from imds_server._admin import AdminHandler
    from imds_server._config import ServerConfig
    from imds_server._server import Server


class ServerTelemetry(Telemetry):
    def server_arguments(self, config: ServerConfig) -> dict[str, Any]:
        """Keyword arguments for ``Server``: observer, admin routes, the log with on_commit."""
        return {"observer": self.observer, "extra_routes": self.admin_routes(),
                "log": open_log(config.data_dir, on_commit=self.on_commit)}

    def watch(self, server: Server) -> None:
        """Scrape-time collectors over the server and its replica (once it has one)."""
        self.watch_server(server.statistics)
        self.watch_replica(lambda: server.replica)
        self.metrics.register(StreamSourceCollector(lambda: server.admin.source_details()))

    def admin_routes(self) -> dict[str, AdminHandler]:
        by_path: dict[str, AdminHandler] = {}
        for (method, path), handler in self.routes().items():
            by_path[path] = _adapt(method, path, handler)
        return by_path


def for_server(config: ServerConfig) -> ServerTelemetry:
    """Telemetry from the server's ``cluster``, ``machine`` and ``[telemetry]`` settings.

    Logs go to ``telemetry.log_dir``, else ``<data-dir>.logs`` next to the data directory
    (the durable log owns its directory and refuses foreign files in it), else (no data
    directory) to stderr."""
    tconfig = TelemetryConfig.from_mapping(config.telemetry, cluster=config.cluster or None,
                                           machine=config.machine or None)
    log_dir: Path | None = tconfig.log_dir
    if log_dir is None and config.data_dir is not None:
        log_dir = config.data_dir.with_name(config.data_dir.name + ".logs")
    return ServerTelemetry(tconfig, log_dir=log_dir,
                           known_api_versions=tuple(sorted(SCHEDULED_EVENTS_KNOWN)))


def _adapt(method: str, path: str, handler: Handler) -> AdminHandler:
    async def route(request: Request) -> Response:
        if request.method not in (method, "HEAD" if method == "GET" else method):
            return error(405, f"Method {request.method} not allowed", route=path,
                         headers=(("Allow", method),))
        query: Mapping[str, str] = parse_query(request.query_string)
        answer = await handler(query, request.headers)
        if isinstance(answer.body, bytes):
            return Response(answer.status, answer.body, answer.content_type, answer.headers,
                            route=path)
        return Response(answer.status, b"", answer.content_type, answer.headers,
                        stream=answer.body, route=path)
    return route
