"""Structured JSON lines on the standard library's ``logging``.

Why stdlib logging rather than structlog: every component already logs through ``logging``;
its ``QueueHandler``/``QueueListener`` move file I/O to a thread and its rotating handlers
give the cold path, so one standard pipeline serves components and access records with no
new dependency. Structured fields travel in ``extra={"fields": {...}}``.

A line is rendered where it is produced (the request path, or the logging call); only
rendered strings cross the queue, so the writer thread never touches live objects.
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

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode
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


def render_access(r: AccessRecord) -> str:
    """One access record as a JSON line (no newline)."""
    return _encode({
        "time": iso_time(r.time), "level": "info", "logger": ACCESS_LOGGER,
        "message": f"{r.method} {r.path} {r.status}",
        "request_id": r.request_id, "vm": r.vm, "caller": r.caller, "method": r.method,
        "route": r.route, "path": r.path, "api_version": r.api_version, "status": r.status,
        "bytes": r.bytes, "seconds": round(r.seconds, 7), "refused": r.refused,
        "watch": r.watch,
    })


class JsonFormatter(logging.Formatter):
    """Renders a ``LogRecord`` as one JSON line; pre-rendered lines pass through."""

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record, RenderedRecord):
            return record.msg
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


class RenderedRecord(logging.LogRecord):
    """A line rendered already: skips ``LogRecord.__init__`` (pid, thread, caller lookups),
    which would cost more than the rendering itself on the request path."""

    def __init__(self, name: str, levelno: int, line: str, created: float) -> None:
        self.name = name
        self.levelno = levelno
        self.levelname = logging.getLevelName(levelno)
        self.msg = line
        self.message = line
        self.args = None
        self.exc_info = None
        self.exc_text = None
        self.stack_info = None
        self.created = created
        self.msecs = 0.0
        self.relativeCreated = 0.0
        self.pathname = self.filename = self.module = self.funcName = ""
        self.lineno = 0
        self.thread = self.process = None
        self.threadName = self.processName = self.taskName = None

    def getMessage(self) -> str:
        return self.msg


class PassThroughFormatter(logging.Formatter):
    """For handlers behind the queue: lines were rendered by ``JsonFormatter`` already."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.msg
        return msg if isinstance(msg, str) else str(msg)
