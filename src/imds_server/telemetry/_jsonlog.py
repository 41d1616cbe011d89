"""Structured JSON lines on the standard library's ``logging``.

Why stdlib logging rather than structlog: every component already logs through ``logging``
and its rotating file handler gives the cold path, so one standard pipeline serves
components and access records with no new dependency (file I/O happens on the pipeline's
writer thread: ``_pipeline.py``). Structured fields travel in ``extra={"fields": {...}}``.

A component line is rendered where it is produced (the logging call: a ``LogRecord`` holds
live ``args``). An access line is rendered by the pipeline's writer thread from the
request's ``AccessRecord``, which is immutable and complete when the request is answered,
so the line is the same as if rendered on the request path (``_pipeline.py`` says why).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from imds_server._observe import AccessRecord

ACCESS_LOGGER = "imds_server.access"
#: Keys every line has, in this order; access lines add ``ACCESS_FIELDS``.
BASE_FIELDS = ("time", "level", "logger", "message")
ACCESS_FIELDS = ("request_id", "vm", "caller", "method", "route", "path", "api_version",
                 "status", "bytes", "seconds", "refused", "watch")

_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode  # ASCII out
_string = json.encoder.encode_basestring_ascii  # the C escaper json.dumps uses
#: (second, its "YYYY-MM-DDTHH:MM:SS"): one tuple, replaced whole, so a thread never pairs
#: one second with another's text (several threads render times).
_last: tuple[int, str] = (-1, "")


def _second_text(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def iso_time(t: float) -> str:
    """UTC ISO-8601 with microseconds and ``Z``; fixed width, so strings sort as times."""
    global _last
    second = int(t)
    last = _last
    if second != last[0]:  # one strftime per second, not per line
        last = _last = (second, _second_text(second))
    return f"{last[1]}.{int((t - second) * 1e6):06d}Z"


def _opt(value: str | None) -> str:
    return "null" if value is None else _string(value)


def render_access(r: AccessRecord) -> str:
    """One access record as a JSON line (no newline), keys in ``ACCESS_FIELDS`` order."""
    return access_line(r)[:-1]


def access_line(r: AccessRecord) -> str:
    """One access record as a JSON line ending in a newline, keys in ``ACCESS_FIELDS`` order.

    A template rather than ``json.dumps`` of a dict: it runs once per request, and costs
    about half (orjson of a dict saves little more, as building the dict, the time and the
    number formatting stay in Python: bench/bench_telemetry.py). Every string field goes
    through the C JSON escaper, so a client's path or api-version cannot break the line
    (tests/telemetry/test_render.py checks arbitrary text round-trips). ``int()`` keeps
    numbers numbers whatever the server hands over; ``.7f`` is ``round(seconds, 7)`` as
    text (the same float once parsed) for a third of the cost of ``round`` + ``repr``.
    """
    return (
        f'{{"time":"{iso_time(r.time)}","level":"info","logger":"{ACCESS_LOGGER}",'
        f'"message":{_string(f"{r.method} {r.path} {r.status}")},'
        f'"request_id":{_string(r.request_id)},"vm":{_opt(r.vm)},'
        f'"caller":{_string(r.caller)},"method":{_string(r.method)},'
        f'"route":{_string(r.route)},"path":{_string(r.path)},'
        f'"api_version":{_opt(r.api_version)},"status":{int(r.status)},'
        f'"bytes":{int(r.bytes)},"seconds":{float(r.seconds):.7f},'
        f'"refused":{_opt(r.refused)},"watch":{"true" if r.watch else "false"}}}\n')


#: An access record as the pipeline queues it: a plain tuple, in this order. Why not the
#: ``AccessRecord`` itself: it is a GC-tracked object, and thousands waiting ~50 ms for the
#: writer were promoted through the collector's generations and set off full collections
#: on the event loop; a tuple of strings and numbers is untracked at its first collection.
#: The last nine fields are all a line's text but its time, id and numbers: the segment
#: cache's key is ``item[4:]``.
QUEUED_FIELDS = ("time", "request_id", "bytes", "seconds", "method", "path", "status", "vm",
                 "caller", "route", "api_version", "refused", "watch")
QueuedAccess = tuple[float, str, int, float, str, str, int, str | None, str, str, str | None,
                     str | None, bool]


#: An access line rendered on the request path (``TelemetryObserver.answered``), as the
#: pipeline queues it: (the line with its newline, request_id, status, seconds, watch,
#: refused). The writer passes the line through; the warm budget reads the rest.
RenderedAccess = tuple[str, str, int, float, bool, str | None]


def second_prefix(second: int) -> str:
    """The start of every access line of one second: ``{"time":"YYYY-MM-DDTHH:MM:SS.``."""
    return f'{{"time":"{_second_text(second)}.'


def answer_segments(method: str, path: str, status: int, vm: str | None, caller: str,
                    route: str, api_version: str | None, watch: bool
                    ) -> tuple[str, str, str]:
    """The fixed parts of an answer's access line (not a refusal), to be joined as
    ``second_prefix + 6-digit µs + head + request_id + middle + bytes + ',"seconds":' +
    seconds (.7f) + tail``; the request id goes in unescaped (the server's own)."""
    head, middle, tail = _segments((0.0, "", 0, 0.0, method, path, status, vm, caller,
                                    route, api_version, None, watch))
    return head + '"', '"' + middle, tail


def queued(r: AccessRecord) -> QueuedAccess:
    """``r`` as the pipeline queues it (``QUEUED_FIELDS``; the pipeline inlines this)."""
    return (r.time, r.request_id, r.bytes, r.seconds, r.method, r.path, r.status, r.vm,
            r.caller, r.route, r.api_version, r.refused, r.watch)


class Line(NamedTuple):
    """A component line, rendered where it was logged, as the pipeline queues it."""

    level: int
    text: str  # ends with a newline
    logger: str = ""  # the warm path throttles per logger


#: Rendered line segments kept by ``AccessRenderer`` (a VM's requests repeat them), and the
#: longest path cached: together they bound the cache to about a megabyte whatever the
#: clients send.
SEGMENT_CACHE_ENTRIES = 1024
SEGMENT_CACHE_MAX_PATH = 256


def split_lines(item: str) -> list[str]:
    """The lines of a queued item (one line, or a chunk of them), each with its newline.
    Splits at newlines only: ``str.splitlines`` also splits at U+2028 and the like, which
    a component line may hold unescaped."""
    if item.find("\n") == len(item) - 1:
        return [item]
    return [line + "\n" for line in item.split("\n")[:-1]]


class AccessRenderer:
    """Renders batches of queued access records exactly as ``access_line``, at ~60% of its
    cost.

    A VM asks the same few paths: everything of a line but its time, request id, bytes and
    seconds is fixed by (method, path, status, vm, caller, route, api_version, refused,
    watch), so those segments are rendered (escaped) once and reused. The time prefix is
    formatted once per second. One renderer per thread: it keeps state and takes no lock
    (the pipeline's writer owns one). ``tests/telemetry/test_render.py`` checks that it
    agrees with ``access_line`` on arbitrary records.
    """

    def __init__(self) -> None:
        self._segments: dict[tuple[object, ...], tuple[str, str, str]] = {}
        self._second = -1
        self._prefix = ""

    def render(self, batch: Sequence[QueuedAccess | RenderedAccess | tuple[str, int] | str
                                      | Line]
               ) -> tuple[list[str], list[int] | None, int]:
        """``batch``: queued access records (``queued()``), access lines rendered already
        (``RenderedAccess``, a chunk of lines ``(text, count)``, or the line alone) and
        component ``Line``s (all passed through). Returns the lines (each ending in a
        newline; a chunk's text is one item), each item's level (None when every line is
        an access line: info) and how many access lines."""
        out: list[str] = []
        append = out.append
        segments = self._segments
        get = segments.get
        esc = _string
        second, prefix = self._second, self._prefix
        levels: list[int] | None = None
        chunked = 0  # lines beyond one per item, in chunks
        items: Sequence[Any] = batch  # fields by position: see QUEUED_FIELDS
        try:
            for i, item in enumerate(items):
                if type(item) is str:  # an access line rendered on the request path
                    if levels is not None:
                        levels.append(logging.INFO)
                    append(item)
                    continue
                if type(item) is not tuple:  # a component Line
                    if levels is None:
                        levels = [logging.INFO] * i
                    levels.append(item[0])
                    append(item[1])
                    continue
                if levels is not None:
                    levels.append(logging.INFO)
                if type(item[0]) is str:  # rendered on the request path already
                    append(item[0])
                    if len(item) == 2:  # a chunk of them (``_pipeline.LineChunk``)
                        chunked += item[1] - 1
                    continue
                t = item[0]
                s = int(t)
                if s != second:
                    second = s
                    prefix = f'{{"time":"{_second_text(s)}.'
                key = item[4:]
                segment = get(key)
                if segment is None:
                    segment = _segments(item)
                    if len(item[5]) <= SEGMENT_CACHE_MAX_PATH:
                        if len(segments) >= SEGMENT_CACHE_ENTRIES:
                            segments.clear()
                        segments[key] = segment
                head, middle, tail = segment
                append(f'{prefix}{int((t - s) * 1e6):06d}{head}{esc(item[1])}{middle}'
                       f'{int(item[2])},"seconds":{float(item[3]):.7f}{tail}')
        finally:
            self._second, self._prefix = second, prefix
        count = chunked + (len(out) if levels is None else sum(
            1 for x in batch if type(x) is tuple or type(x) is str))
        return out, levels, count


def _segments(q: QueuedAccess) -> tuple[str, str, str]:
    method, path, status, vm, caller, route, api_version, refused, watch = q[4:]
    return (
        f'Z","level":"info","logger":"{ACCESS_LOGGER}",'
        f'"message":{_string(f"{method} {path} {status}")},"request_id":',
        f',"vm":{_opt(vm)},"caller":{_string(caller)},"method":{_string(method)},'
        f'"route":{_string(route)},"path":{_string(path)},'
        f'"api_version":{_opt(api_version)},"status":{int(status)},"bytes":',
        f',"refused":{_opt(refused)},"watch":{"true" if watch else "false"}}}\n')


class JsonFormatter(logging.Formatter):
    """Renders a ``LogRecord`` as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": iso_time(record.created), "level": record.levelname.lower(),
            "logger": record.name, "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                doc.setdefault(str(key), value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return _encode(doc)
