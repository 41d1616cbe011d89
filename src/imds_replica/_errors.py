"""The error hierarchy: split by who is at fault, carrying what the HTTP layer answers.

``ClientError`` and its subclasses are the caller's fault (bad events, bad requests, bad
configuration); ``ServerError`` and its subclasses are ours (storage, internal). Each carries
an HTTP ``status`` and a human ``message`` so the server maps them without a lookup table.
Third-party exceptions are translated into these at the edge and never leak out.
"""

from __future__ import annotations


class ImdsError(Exception):
    """Base of every error this project raises on purpose."""

    status: int = 500

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class ClientError(ImdsError):
    """The caller sent something we refuse. Nothing of it was applied."""

    status = 400


class ValidationError(ClientError, ValueError):
    """An event, batch or value breaks the event contract.

    ``index`` is the position of the offending event inside a batch, when there is one.
    """

    def __init__(self, message: str, *, index: int | None = None, status: int | None = None):
        if index is not None:
            message = f"event {index}: {message}"
        super().__init__(message, status=status)
        self.index = index


class ConfigError(ClientError, ValueError):
    """A configuration file or flag is invalid; ``key`` names the offending setting."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


class ServerError(ImdsError):
    """Our fault: the request was fine but we could not serve it."""

    status = 500


class StorageError(ServerError):
    """The durable log or data directory failed or is unusable."""


class CorruptLogError(StorageError):
    """The log holds a damaged record that is followed by valid ones.

    ``segment`` and ``offset`` locate the damage; opening refuses rather than silently
    dropping acknowledged data. ``imds-replica log repair`` moves the damaged suffix aside.
    """

    def __init__(self, message: str, *, segment: str | None = None, offset: int | None = None):
        where = f" ({segment} at offset {offset})" if segment is not None else ""
        super().__init__(message + where)
        self.segment = segment
        self.offset = offset


class Unavailable(ServerError):
    """Temporarily unable to answer (starting, replaying, shutting down)."""

    status = 503

    def __init__(self, message: str, *, retry_after: int = 1, status: int | None = None):
        super().__init__(message, status=status)
        self.retry_after = retry_after


class LogUnavailable(StorageError):
    """The durable log refuses writes for now; reads are still served from the view.

    ``reason`` is ``"full"`` (the disk or a quota ran out: the log retries by itself and
    takes writes again once space is back) or ``"failed"`` (a failed fsync or an I/O error:
    the log stays read-only until the process restarts). The batch was not applied and is
    not durable: retry after ``retry_after`` seconds. Answered as 503 with Retry-After.
    """

    status = 503

    def __init__(self, message: str, *, reason: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after
