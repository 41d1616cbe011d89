"""Scheduled events: the list a guest polls (or watches) and the approvals it posts.

Events live in the view at ``("vms", VM, "scheduledevents", EVENTID)``. Approvals are
events of source ``guest`` at ``("vms", VM, "approvals", EVENTID)``: they go through the
log like any other data, so they survive restarts and the host agent reads them through
the library (``view.get``) or the admin API (``GET /view?prefix=vms/VM/approvals``).

``DocumentIncarnation`` is the greatest version among the list's registers, tombstones
included: every replica that saw the same events computes the same number, and it rises
with every change made with a newer version than the list's previous ones (HLC and
counter sources both do).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from imds_replica import ClientError, Event, View, hlc_version

APPROVAL_SOURCE = "guest"
EVENT_DEFAULTS: dict[str, Any] = {
    "EventType": "", "ResourceType": "VirtualMachine", "Resources": [],
    "EventStatus": "Scheduled", "NotBefore": "", "Description": "",
    "EventSource": "Platform", "DurationInSeconds": -1,
}


def events_prefix(vm: str) -> tuple[str, ...]:
    return ("vms", vm, "scheduledevents")


def approval_key(vm: str, event_id: str) -> tuple[str, ...]:
    return ("vms", vm, "approvals", event_id)


def incarnation(registers: Iterable[Event]) -> int:
    return max((e.version for e in registers), default=0)


def render_events(view: View, vm: str) -> dict[str, Any]:
    """``{"DocumentIncarnation": int, "Events": [...]}`` ordered by EventId."""
    prefix = events_prefix(vm)
    listing = view.document(prefix)
    events = []
    if isinstance(listing, dict):
        for event_id in sorted(listing):
            body = listing[event_id]
            if not isinstance(body, dict):
                continue
            event = {"EventId": event_id, **EVENT_DEFAULTS}
            event.update({k: v for k, v in body.items() if k != "EventId"})
            events.append(event)
    return {"DocumentIncarnation": incarnation(view.registers(prefix)), "Events": events}


def approvals(body: Any, known: Iterable[str]) -> list[str]:
    """The EventIds of a ``{"StartRequests": [{"EventId": ...}]}`` body, all of them known.

    Raises ``ClientError`` (400) on a malformed body or an EventId not in the list."""
    if not isinstance(body, dict) or not isinstance(body.get("StartRequests"), list):
        raise ClientError('Bad request. Expected {"StartRequests": [{"EventId": ...}]}')
    known_ids = set(known)
    ids: list[str] = []
    for item in body["StartRequests"]:
        event_id = item.get("EventId") if isinstance(item, dict) else None
        if not isinstance(event_id, str) or not event_id:
            raise ClientError("Bad request. Each StartRequest needs an EventId string")
        if event_id not in known_ids:
            raise ClientError(f"Bad request. EventId {event_id} is not scheduled")
        if event_id not in ids:
            ids.append(event_id)
    if not ids:
        raise ClientError("Bad request. StartRequests is empty")
    return ids


def not_in_effect(view: View, events: Iterable[dict[str, Any]]) -> list[str]:
    """The EventIds of submitted approvals that the view does not show as approved: a
    register under the approval source at a higher version (an operator's record, say)
    wins over them. An approval already recorded by someone else counts as in effect."""
    masked = []
    for wire in events:
        current = view.get(tuple(wire["key"]))
        value = current.value if current is not None and not current.deleted else None
        if not (isinstance(value, dict) and value.get("approved") is True):
            masked.append(str(wire["value"]["EventId"]))
    return masked


def approval_events(vm: str, event_ids: Iterable[str], caller: str,
                    now: float) -> list[dict[str, Any]]:
    """Wire-form events recording approvals; versions from the wall clock (HLC encoding)."""
    version = hlc_version(int(now * 1000))
    return [{"source": APPROVAL_SOURCE, "key": list(approval_key(vm, eid)),
             "version": version,
             "value": {"EventId": eid, "approved": True, "caller": caller,
                       "approvedAt": round(now, 3)}}
            for eid in event_ids]
