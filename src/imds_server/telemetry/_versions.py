"""The bounded api-version label: known versions, ``other``, or ``none``.

A client chooses the api-version string, so using it verbatim as a label would let any VM
create unbounded series. Versions the server knows (its published list, and the scheduled
events line) keep their name; the rest are ``other``.
"""

from __future__ import annotations

from collections.abc import Container

from imds_server._versions import SCHEDULED_EVENTS_KNOWN

KNOWN_API_VERSIONS: tuple[str, ...] = tuple(sorted(SCHEDULED_EVENTS_KNOWN))


def bound_api_version(version: str | None, known: Container[str]) -> str:
    if version is None:
        return "none"
    return version if version in known else "other"
