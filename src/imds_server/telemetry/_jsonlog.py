"""Structured JSON lines on the standard library's ``logging``.

Why stdlib logging rather than structlog: every component already logs through ``logging``;
its ``QueueHandler``/``QueueListener`` move file I/O to a thread and its rotating handlers
give the cold path, so one standard pipeline serves components and access records with no
new dependency. Structured fields travel in ``extra={"fields": {...}}``.

A component line is rendered where it is produced (the logging call: a ``LogRecord`` holds
live ``args``). An access line is rendered by the pipeline's writer thread from the
request's ``AccessRecord``, which is immutable and complete when the request is answered,
so the line is the same as if rendered on the request path (``_pipeline.py`` says why).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

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


#: Rendered line segments kept by ``AccessRenderer`` (a VM's requests repeat them), and the
#: longest path cached: together they bound the cache to about a megabyte whatever the
#: clients send.
SEGMENT_CACHE_ENTRIES = 1024
SEGMENT_CACHE_MAX_PATH = 256


class AccessRenderer:
    """Renders batches of access records exactly as ``access_line``, at ~60% of its cost.

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

    def render(self, batch: list[Any]) -> tuple[list[str], list[int] | None, int]:
        """``batch``: access records, and ``(level, line)`` already rendered (component
        lines, passed through). Returns the lines (each ending in a newline), each line's
        level (None when every line is an access line: info) and how many access lines."""
        out: list[str] = []
        append = out.append
        segments = self._segments
        get = segments.get
        esc = _string
        second, prefix = self._second, self._prefix
        levels: list[int] | None = None
        try:
            for i, r in enumerate(batch):
                if type(r) is tuple:
                    if levels is None:
                        levels = [logging.INFO] * i
                    levels.append(r[0])
                    append(r[1])
                    continue
                if levels is not None:
                    levels.append(logging.INFO)
                t = r.time
                s = int(t)
                if s != second:
                    second = s
                    prefix = f'{{"time":"{_second_text(s)}.'
                key = (r.method, r.path, r.status, r.vm, r.caller, r.route, r.api_version,
                       r.refused, r.watch)
                segment = get(key)
                if segment is None:
                    segment = self._segment(r)
                    if len(r.path) <= SEGMENT_CACHE_MAX_PATH:
                        if len(segments) >= SEGMENT_CACHE_ENTRIES:
                            segments.clear()
                        segments[key] = segment
                head, middle, tail = segment
                append(f'{prefix}{int((t - s) * 1e6):06d}{head}{esc(r.request_id)}{middle}'
                       f'{int(r.bytes)},"seconds":{float(r.seconds):.7f}{tail}')
        finally:
            self._second, self._prefix = second, prefix
        count = len(out) if levels is None else sum(1 for x in batch if type(x) is not tuple)
        return out, levels, count

    @staticmethod
    def _segment(r: AccessRecord) -> tuple[str, str, str]:
        return (
            f'Z","level":"info","logger":"{ACCESS_LOGGER}",'
            f'"message":{_string(f"{r.method} {r.path} {r.status}")},"request_id":',
            f',"vm":{_opt(r.vm)},"caller":{_string(r.caller)},"method":{_string(r.method)},'
            f'"route":{_string(r.route)},"path":{_string(r.path)},'
            f'"api_version":{_opt(r.api_version)},"status":{int(r.status)},"bytes":',
            f',"refused":{_opt(r.refused)},"watch":{"true" if r.watch else "false"}}}\n')


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
