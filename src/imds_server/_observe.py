"""What the server tells telemetry about each request: the contract between the two.

The server builds one ``AccessRecord`` per answered request and hands it to its
``RequestObserver`` on the request path; an observer must not block or raise. Gauges
(connections, parked watchers) are read from ``Server.statistics()`` instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import attrs

if TYPE_CHECKING:
    from ._request import Response


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


class AnswerObserver(Protocol):
    """What an observer may add to be told of answers without an ``AccessRecord`` built
    for each (building one cost about as much as the rest of telemetry): the server calls
    ``answered`` for every answer that is not a refusal (``response.refused`` is None) and
    ``request`` for the rest. Both describe the same request; the record's fields are
    ``time``, ``caller``, ``method``, ``bytes`` (``sent``) and ``seconds`` as given,
    ``request_id`` is ``f"{id_prefix}{id_number:x}"`` (made only if a line needs it),
    ``path`` is ``target`` without its query (the request's ``path``: given whole, it is
    compared rather than split per request), the rest from ``response``."""

    def request(self, record: AccessRecord) -> None: ...

    def answered(self, time: float, id_prefix: str, id_number: int, caller: str,
                 method: str, target: str, response: Response, sent: int,
                 seconds: float) -> None: ...


class NullObserver:
    def request(self, record: AccessRecord) -> None:
        pass
