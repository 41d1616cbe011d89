"""What the server tells telemetry about each request: the contract between the two.

The server builds one ``AccessRecord`` per answered request and hands it to its
``RequestObserver`` on the request path; an observer must not block or raise. Gauges
(connections, parked watchers) are read from ``Server.statistics()`` instead.
"""

from __future__ import annotations

from typing import Protocol

import attrs


@attrs.frozen
class AccessRecord:
    time: float  # wall-clock seconds when the request was received
    request_id: str
    caller: str  # peer address
    vm: str | None  # the caller's VM, once known
    method: str
    route: str  # templated, bounded: "/metadata/instance", "/metadata/versions", "other", ...
    path: str
    api_version: str | None  # as sent by the client (telemetry bounds the label set)
    status: int
    bytes: int  # body bytes sent
    seconds: float  # from request received to response written
    #: Why a request was refused, if it was: "no-metadata-header", "forwarded",
    #: "unknown-caller", "rate-limited", "bad-api-version", "bad-request", "starting".
    refused: str | None = None
    watch: bool = False  # a wait_for_change request


class RequestObserver(Protocol):
    def request(self, record: AccessRecord) -> None: ...


class NullObserver:
    def request(self, record: AccessRecord) -> None:
        pass
