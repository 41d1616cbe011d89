"""Structured JSON lines on the standard library's ``logging``.

Why stdlib logging rather than structlog: every component already logs through ``logging``;
its ``QueueHandler``/``QueueListener`` move file I/O to a thread and its rotating handlers
give the cold path, so one standard pipeline serves components and access records with no
new dependency. Structured fields travel in ``extra={"fields": {...}}``.

A line is rendered where it is produced (the request path, or the logging call); only
rendered strings cross the queue (``_pipeline.py``), so the writer thread never touches
live objects.
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
_last_second = -1
_last_prefix = ""


def iso_time(t: float) -> str:
    """UTC ISO-8601 with microseconds and ``Z``; fixed width, so strings sort as times."""
    global _last_second, _last_prefix
    second = int(t)
    if second != _last_second:  # one strftime per second, not per line
        _last_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = second
    return f"{_last_prefix}.{int((t - second) * 1e6):06d}Z"


def _opt(value: str | None) -> str:
    return "null" if value is None else _string(value)


def render_access(r: AccessRecord) -> str:
    """One access record as a JSON line (no newline), keys in ``ACCESS_FIELDS`` order.

    Written as a template rather than ``json.dumps`` of a dict: it runs once per request
    and costs half as much; every string still goes through the JSON escaper."""
    return (
        f'{{"time":"{iso_time(r.time)}","level":"info","logger":"{ACCESS_LOGGER}",'
        f'"message":{_string(f"{r.method} {r.path} {r.status}")},'
        f'"request_id":{_string(r.request_id)},"vm":{_opt(r.vm)},'
        f'"caller":{_string(r.caller)},"method":{_string(r.method)},'
        f'"route":{_string(r.route)},"path":{_string(r.path)},'
        f'"api_version":{_opt(r.api_version)},"status":{int(r.status)},'
        f'"bytes":{int(r.bytes)},"seconds":{round(float(r.seconds), 7)!r},'
        f'"refused":{_opt(r.refused)},"watch":{"true" if r.watch else "false"}}}')


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
