"""HTTP/1.1 framing on httptools (llhttp): bytes in, ``Request`` objects out, and
``Response`` objects to bytes. No sockets here; ``_connection`` moves the bytes.

httptools rather than h11: measured under trio on these machines, h11 costs ~192 µs of CPU
per request and httptools ~49 µs, and the read path is the whole load of this service.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections import deque
from types import MappingProxyType

import attrs
import httptools

from ._request import REASONS, Request, Response


def _server_line() -> str:
    """``Server: imds-replica/<version>`` (real IMDS sends ``Server: IMDS/<build>``, and
    MSAL's newer identity flows look for a ``Server`` header)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"Server: imds-replica/{version('imds-replica')}\r\n"
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "Server: imds-replica\r\n"


SERVER_LINE = _server_line()


@attrs.frozen
class HttpLimits:
    max_request_line: int = 8192  # bytes of the request target
    max_header_bytes: int = 16384  # bytes of the request line and headers together
    max_headers: int = 100
    max_body_bytes: int = 65536


class ProtocolError(Exception):
    """The peer sent something we will not parse further: answer ``status`` and close.

    ``bare``: the peer spoke HTTP/0.9, whose answers have no status line or headers; the
    answer is then the body alone (what such a client can read), and the connection closes.
    """

    def __init__(self, status: int, message: str, *, bare: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.bare = bare


HTTP09_MESSAGE = "HTTP/0.9 is not supported: send an HTTP/1.1 request"


class _Collector:
    """httptools callbacks; errors are kept and raised by ``HttpConnection.feed`` (httptools
    would wrap them), and nothing here raises past the limits it checks."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.error: ProtocolError | None = None
        self.in_head = False
        self.in_message = False
        self.heads = 0
        self.done: deque[tuple[Request, bool]] = deque()
        self._url = b""
        self._headers: dict[str, str] = {}
        self._count = 0
        self._size = 0
        self._body = bytearray()
        self.parser: httptools.HttpRequestParser | None = None

    def _fail(self, status: int, message: str) -> None:
        self.error = ProtocolError(status, message)
        raise self.error

    def on_message_begin(self) -> None:
        self.in_head = self.in_message = True
        self._url = b""
        self._headers = {}
        self._count = 0
        self._size = 0
        if self._body:
            self._body = bytearray()

    def on_url(self, url: bytes) -> None:
        # Usually one call per request: keep the bytes as they come, join only if split.
        self._url = self._url + url if self._url else url
        if len(self._url) > self.limits.max_request_line:
            self._fail(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count += 1
        self._size += len(name) + len(value) + 4
        limits = self.limits
        if self._count > limits.max_headers or \
                self._size + len(self._url) > limits.max_header_bytes:
            self._fail(431, "request header too large")
        key = _header_name(name)
        text = value.decode("latin-1")
        headers = self._headers
        old = headers.get(key)
        headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.heads += 1
        assert self.parser is not None
        version = self.parser.get_http_version()
        if version != "1.1" and version != "1.0":
            if version.startswith("0."):
                self._fail(400, HTTP09_MESSAGE)
            self._fail(505, f"HTTP/{version} is not supported: send an HTTP/1.1 request")
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limits.max_body_bytes:
            self._fail(413, "request body too large")

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > self.limits.max_body_bytes:
            self._fail(413, "request body too large")

    def on_message_complete(self) -> None:
        assert self.parser is not None
        try:
            target = self._url.decode("ascii")
        except UnicodeDecodeError:
            self._fail(400, "request target is not ASCII")
        raw = self.parser.get_method()
        method = _METHODS.get(raw) or raw.decode("ascii", "replace")
        request = Request(method, target, MappingProxyType(self._headers),
                          bytes(self._body) if self._body else b"")
        self.done.append((request, self.parser.should_keep_alive()))
        self.in_message = False


_MAX_REPEAT = 4096  # bytes: a request longer than this is not remembered for reuse
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH",
                                     "OPTIONS")}
_NAMES: dict[bytes, str] = {}


def _header_name(name: bytes) -> str:
    """Lower-case header name, memoised: clients send the same few names every time.
    Bounded (names are the client's choice)."""
    key = _NAMES.get(name)
    if key is None:
        key = name.decode("latin-1").lower()
        if len(_NAMES) < 512:
            _NAMES[name] = key
    return key


class HttpConnection:
    """One connection's parsing state. ``feed(data)`` then ``next_request()`` until None.

    Raises ``ProtocolError`` on malformed input or a broken limit; the connection must then
    answer that status (if it can) and close."""

    def __init__(self, limits: HttpLimits | None = None) -> None:
        self.limits = limits or HttpLimits()
        self._proto = _Collector(self.limits)
        self._parser = httptools.HttpRequestParser(self._proto)
        self._proto.parser = self._parser
        self._head_bytes = 0
        self._line: bytes | None = None  # the request line so far, while it is incomplete
        self.requests = 0
        # The last lone request read in one piece, and what it parsed to: clients on a
        # keep-alive connection (guest agents, pollers) send byte-identical requests.
        self._repeat = b""
        self._repeated: tuple[Request, bool] | None = None

    @property
    def mid_request(self) -> bool:
        """A request has started arriving but is not complete."""
        return self._proto.in_message

    @property
    def pending(self) -> bool:
        """A complete request is parsed and waits for ``next_request``."""
        return bool(self._proto.done)

    @property
    def in_body(self) -> bool:
        """A request's head is complete and its body is still arriving."""
        return self._proto.in_message and not self._proto.in_head

    def feed(self, data: bytes) -> None:
        proto = self._proto
        boundary = not proto.in_message
        if boundary and data == self._repeat and self._repeated is not None:
            # The bytes of the last lone request again, at a message boundary: llhttp
            # would call back the same values and end where it started (the request was
            # complete, bodiless and keep-alive), so its parse is reused. The Request is
            # immutable (headers are a read-only view), so sharing it is safe.
            proto.done.append(self._repeated)
            self._head_bytes = 0
            return
        heads = proto.heads
        queued = len(proto.done)
        # Bytes since the last complete head: bounds a head that never ends (httptools
        # buffers partial names and values itself). A chunk that completes a head resets
        # the count, so the bound is approximate by at most one receive.
        self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise ProtocolError(400, "protocol upgrade not supported") from None
        except httptools.HttpParserError:
            error = self._proto.error
            if error is not None:
                if error.message == HTTP09_MESSAGE:
                    raise ProtocolError(400, HTTP09_MESSAGE, bare=True) from None
                raise error from None
            raise ProtocolError(400, "malformed request") from None
        if proto.heads != heads:
            self._head_bytes = 0
        if proto.in_head:
            if self._head_bytes > self.limits.max_header_bytes:
                raise ProtocolError(431, "request header too large")
            self._check_request_line(data, boundary and proto.heads == heads)
        elif self._line is not None:
            self._line = None
        if boundary and not proto.in_message and proto.heads == heads + 1 and \
                len(proto.done) == queued + 1 and len(data) <= _MAX_REPEAT:
            item = proto.done[-1]
            if item[1] and not item[0].body:
                self._repeat, self._repeated = data, item

    def _check_request_line(self, data: bytes, started_here: bool) -> None:
        """A request line that ends without ``HTTP/1.x`` is an HTTP/0.9 request, complete
        as it is (llhttp would wait for headers that never come, then the client would get
        an HTTP/1.1 408 it cannot read). Only a head that did not complete in one receive
        comes here; a line whose start came after other requests in one receive is not
        tracked (it then meets the header timeout)."""
        if started_here:
            self._line = b""
        if self._line is None:
            return
        line = (self._line + data).lstrip(b"\r\n")
        end = line.find(b"\n")
        if end < 0:
            self._line = line if len(line) <= self.limits.max_request_line + 16 else None
            return
        self._line = None
        if b" HTTP/" not in line[:end]:
            raise ProtocolError(400, HTTP09_MESSAGE, bare=True)

    def next_request(self) -> tuple[Request, bool] | None:
        """The next complete request and whether the client allows keep-alive."""
        if not self._proto.done:
            return None
        self.requests += 1
        return self._proto.done.popleft()


_date_line: tuple[int, bytes] = (0, b"")


def _date_header() -> bytes:
    """``Date: ...\r\n`` as bytes, formatted at most once per second."""
    global _date_line
    second = int(time.time())
    if _date_line[0] != second:
        date = email.utils.formatdate(second, usegmt=True)
        _date_line = (second, f"Date: {date}\r\n".encode("latin-1"))
    return _date_line[1]


def encode_head(response: Response, *, keep_alive: bool, head_only: bool,
                chunked: bool = False) -> bytes:
    """Status line and headers (and the body, unless ``head_only`` or streaming)."""
    status_line, rest = _encode_parts(response, keep_alive=keep_alive, head_only=head_only,
                                      chunked=chunked)
    return b"".join((status_line, _date_header(), rest))


class WireCache:
    """Encoded answers of recently sent ``Response`` objects, by identity.

    The VM API hands out the same immutable ``Response`` for the same answer (until its
    freshness headers change, at most once a second), so its status line, headers and body
    are encoded once; a hit only joins them around the current ``Date`` line. Entries hold
    their response, so an id cannot be reused while it is cached. Bounded: a full cache is
    dropped and refilled (misses, such as one-off error answers, just encode)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        # One map per (keep_alive, head_only): index 2 * keep_alive + head_only.
        self._maps: tuple[dict[int, tuple[Response, bytes, bytes]], ...] = (
            {}, {}, {}, {})

    def encode(self, response: Response, keep_alive: bool, head_only: bool) -> bytes:
        entries = self._maps[2 * keep_alive + head_only]
        entry = entries.get(id(response))
        if entry is None or entry[0] is not response:
            status_line, rest = _encode_parts(response, keep_alive=keep_alive,
                                              head_only=head_only)
            if len(entries) >= self.size:
                entries.clear()
            entry = entries[id(response)] = (response, status_line, rest)
        return b"".join((entry[1], _date_header(), entry[2]))


def _encode_parts(response: Response, *, keep_alive: bool, head_only: bool,
                  chunked: bool = False) -> tuple[bytes, bytes]:
    """The status line, and everything after the ``Date`` line (headers, blank line and
    the body unless ``head_only`` or streaming)."""
    status = response.status
    status_line = f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
    lines = [SERVER_LINE]
    if status != 304:
        lines.append(f"Content-Type: {response.content_type}\r\n")
        if chunked:
            lines.append("Transfer-Encoding: chunked\r\n")
        else:
            lines.append(f"Content-Length: {len(response.body)}\r\n")
    for name, value in response.headers:
        lines.append(f"{name}: {value}\r\n")
    if not keep_alive:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    head = "".join(lines).encode("latin-1")
    if head_only or chunked or status == 304:
        return status_line.encode("latin-1"), head
    return status_line.encode("latin-1"), head + response.body


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"


def error_bytes(status: int, message: str) -> bytes:
    """A complete ``Connection: close`` error answer for a request we could not parse."""
    body = json.dumps({"error": message}).encode()
    return encode_head(Response(status, body), keep_alive=False, head_only=False)
