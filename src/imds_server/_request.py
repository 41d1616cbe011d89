"""What the pure handlers take and give: requests, responses, and the two things a handler
may ask its I/O shell to do for it (park a watcher, submit events) before it can answer.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import unquote

import attrs

from imds_replica import ImdsError

REASONS: Mapping[int, str] = {
    200: "OK", 204: "No Content", 304: "Not Modified", 400: "Bad Request", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
    410: "Gone", 413: "Content Too Large", 414: "URI Too Long", 415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported",
}
JSON = "application/json; charset=utf-8"
#: The only statuses that may carry ``Retry-After`` (see ``failure``).
RETRY_AFTER_STATUSES = frozenset({410, 429, 503})
TEXT = "text/plain; charset=utf-8"


@attrs.frozen(slots=True)
class Request:
    """One parsed HTTP request. Header names are lower case; a repeated header's values are
    joined with ``", "`` (so presence checks and lists both work)."""

    method: str
    target: str  # as sent: path and query
    headers: Mapping[str, str] = attrs.field(factory=dict)
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query_string(self) -> str:
        return self.target.partition("?")[2]


@attrs.frozen(slots=True)
class Response:
    """An answer. ``stream`` (admin extensions only) replaces ``body`` with chunks.

    ``route``/``refused``/``vm``/``api_version``/``watch`` describe the request for the
    access record; they are not sent."""

    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()
    etag: str | None = None
    stream: AsyncIterator[bytes] | None = None
    route: str = "other"
    refused: str | None = None
    vm: str | None = None
    api_version: str | None = None
    watch: bool = False


def error(status: int, message: str, *, refused: str | None = None,
          extra: Mapping[str, Any] | None = None,
          headers: tuple[tuple[str, str], ...] = (), route: str = "other") -> Response:
    body = {"error": message, **(extra or {})}
    return Response(status, json.dumps(body).encode(), JSON, headers, refused=refused,
                    route=route)


def failure(exc: ImdsError, *, route: str = "other",
            extra: Mapping[str, Any] | None = None) -> Response:
    """The answer to a library error: its status and message; a 410, 429 or 503 carries
    ``Retry-After`` (the error's own ``retry_after``, else 1 s) as every one of ours does,
    and no other status does (azure-core retries any status >= 400 that carries it, and
    MSAL replays such answers from its cache)."""
    retry = getattr(exc, "retry_after", None)
    if retry is None:
        retry = 1
    headers = (("Retry-After", str(retry)),) if exc.status in RETRY_AFTER_STATUSES else ()
    return error(exc.status, exc.message, extra=extra, headers=headers, route=route)


class BadQuery(ValueError):
    """A query string we refuse: a repeated name, too many fields, undecodable bytes."""


def parse_query(query: str, *, max_fields: int = 64) -> dict[str, str]:
    """Query parameters; a name given twice raises ``BadQuery`` (the wire rule), and so do
    more than ``max_fields`` parameters and percent-escapes that are not UTF-8."""
    out: dict[str, str] = {}
    if not query:
        return out
    parts = query.split("&")
    if len(parts) > max_fields:
        raise BadQuery("too many query parameters")
    for part in parts:
        if not part:
            continue
        name, _, value = part.partition("=")
        try:
            name = unquote(name.replace("+", " "), errors="strict")
            value = unquote(value.replace("+", " "), errors="strict")
        except UnicodeDecodeError:
            raise BadQuery("query is not UTF-8")
        if name in out:
            raise BadQuery(f"query parameter {name!r} given more than once")
        out[name] = value
    return out


def split_path(path: str) -> list[str] | None:
    """Percent-decoded segments of an absolute path; one trailing slash tolerated.
    None for anything else (relative, empty segments, undecodable)."""
    if not path.startswith("/"):
        return None
    inner = path[1:-1] if path.endswith("/") and len(path) > 1 else path[1:]
    if not inner:
        return []
    try:
        segments = [unquote(s, errors="strict") for s in inner.split("/")]
    except UnicodeDecodeError:
        return None
    return None if "" in segments else segments


@attrs.frozen(slots=True, eq=False)
class Park:
    """Ask the shell to wait (without polling) for a change of ``doc_key`` or ``deadline``
    (seconds from now), then call ``VmApi.resume(park, now, timed_out)``."""

    request: Request
    caller: str
    vm: str
    doc_key: tuple[str, ...]
    last_etag: str
    timeout: float


@attrs.frozen(slots=True, eq=False)
class Offload:
    """Ask the shell to run ``work()`` in a worker thread and send the ``Response`` it
    returns. For CPU work that releases the GIL (signing): the loop keeps answering
    everyone else meanwhile. ``work`` must touch nothing the loop owns (read the view
    before building it)."""

    work: Callable[[], Response]


@attrs.frozen(slots=True, eq=False)
class Submit:
    """Ask the shell to ``replica.submit(events, source=source)``, then send ``response``
    (or the error the submission raised)."""

    events: list[dict[str, Any]]
    source: str
    response: Response
