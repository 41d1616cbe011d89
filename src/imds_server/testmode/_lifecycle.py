"""Scheduled events that run their course, as Azure's platform runs them. Pure: time and
approvals are arguments; the shell (``_runner``) submits what ``step`` returns.

An event is ``Scheduled`` with a ``NotBefore`` ahead (which ``postpone`` may move); it
becomes ``Started`` (``NotBefore`` blank, as Azure renders a started event) once every
guest it names approved it or ``NotBefore`` passed; it leaves the list ``DurationInSeconds``
after it started (or ``run_for`` seconds, for events whose duration is unknown, ``-1``).
Each step is a new register version, so each raises the list's ``DocumentIncarnation``.

Times are wall seconds. ``time_scale`` compresses the plan: with 60, an event planned 900 s
ahead starts 15 s from now (its ``NotBefore`` says so, truthfully) and one of 600 s goes 10 s
after it started; the rendered ``DurationInSeconds`` keeps the planned value.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from imds_replica import ClientError

#: Azure's lead times (seconds between an event's publication and its NotBefore).
DEFAULT_LEAD = {"Reboot": 900.0, "Redeploy": 600.0, "Freeze": 900.0, "Preempt": 30.0,
                "Terminate": 300.0}
EVENT_TYPES = tuple(DEFAULT_LEAD)
#: How long a started event with an unknown duration (-1) stays listed.
DEFAULT_RUN_FOR = 60.0
_KEYS = {"id", "vm", "type", "resources", "description", "source", "not-before-in",
         "duration", "run-for"}

Key = tuple[str, ...]
Change = tuple[Key, Any]  # (register key, value); value None = delete


@attrs.frozen
class PlannedEvent:
    """One scheduled event as a fleet file, the admin API or a scenario plans it."""

    vm: str
    event_id: str
    event_type: str = "Reboot"
    resources: tuple[str, ...] = ()
    description: str = ""
    event_source: str = "Platform"
    not_before_in: float | None = None  # seconds; default: Azure's lead for the type
    duration: int = -1  # DurationInSeconds as rendered
    run_for: float | None = None  # seconds Started before gone; default duration (or 60)

    def __attrs_post_init__(self) -> None:
        if self.event_type not in EVENT_TYPES:
            raise ClientError(f"event type must be one of {', '.join(EVENT_TYPES)}, "
                              f"not {self.event_type!r}")
        if not self.event_id or not self.vm:
            raise ClientError("a scheduled event needs an id and a vm")
        if self.not_before_in is not None and self.not_before_in < 0:
            raise ClientError("not-before-in must be >= 0 seconds")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, vm: str | None = None) -> PlannedEvent:
        if not isinstance(data, Mapping):
            raise ClientError("a scheduled event must be an object")
        unknown = set(data) - _KEYS
        if unknown:
            raise ClientError(f"unknown scheduled-event field {sorted(unknown)[0]!r} "
                              f"(known: {', '.join(sorted(_KEYS))})")
        resources = data.get("resources", ())
        if not isinstance(resources, (list, tuple)) or \
                not all(isinstance(r, str) for r in resources):
            raise ClientError("resources must be an array of strings")
        try:
            return cls(
                vm=str(data.get("vm", vm or "")), event_id=str(data.get("id", "")),
                event_type=str(data.get("type", "Reboot")), resources=tuple(resources),
                description=str(data.get("description", "")),
                event_source=str(data.get("source", "Platform")),
                not_before_in=_seconds(data, "not-before-in"),
                duration=int(data.get("duration", -1)), run_for=_seconds(data, "run-for"))
        except (TypeError, ValueError):
            raise ClientError("not-before-in, duration and run-for must be numbers") from None

    @property
    def lead(self) -> float:
        return DEFAULT_LEAD[self.event_type] if self.not_before_in is None \
            else self.not_before_in

    @property
    def active_for(self) -> float:
        if self.run_for is not None:
            return self.run_for
        return float(self.duration) if self.duration > 0 else DEFAULT_RUN_FOR


@attrs.define
class _Running:
    plan: PlannedEvent
    not_before: float
    started: float | None = None
    published: str = ""  # the phase last returned by step ("" = not yet)


class Lifecycle:
    """The scheduled events in flight; ``step(now, approved)`` says what changed."""

    def __init__(self, *, time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ClientError("time scale must be > 0")
        self.time_scale = time_scale
        self._events: dict[tuple[str, str], _Running] = {}

    def add(self, plan: PlannedEvent, now: float) -> None:
        key = (plan.vm, plan.event_id)
        if key in self._events:
            raise ClientError(f"event {plan.event_id} is already scheduled on {plan.vm}")
        self._events[key] = _Running(plan, now + plan.lead / self.time_scale)

    def postpone(self, vm: str, event_id: str, seconds: float) -> None:
        """Move a not-yet-started event's NotBefore by ``seconds`` (planned time)."""
        running = self._events.get((vm, event_id))
        if running is None or running.started is not None:
            raise ClientError(f"event {event_id} on {vm} is not scheduled (or has started)")
        running.not_before += seconds / self.time_scale
        running.published = ""  # republish with the new NotBefore

    def forget(self, vm: str, event_id: str) -> bool:
        """Stop running an event someone else took off the list (True if it was running)."""
        return self._events.pop((vm, event_id), None) is not None

    def published(self) -> list[tuple[str, str]]:
        """``(vm, event_id)`` of the events already on the list."""
        return [key for key, running in self._events.items() if running.published]

    def __len__(self) -> int:
        return len(self._events)

    def next_deadline(self) -> float | None:
        """When ``step`` may next have something to say without new approvals."""
        times = [r.not_before if r.started is None
                 else r.started + r.plan.active_for / self.time_scale
                 for r in self._events.values()]
        return min(times, default=None)

    def step(self, now: float, approved: Callable[[str, str], bool]) -> list[Change]:
        changes: list[Change] = []
        for key, running in list(self._events.items()):
            plan = running.plan
            if running.started is None and (now >= running.not_before
                                            or approved(plan.vm, plan.event_id)):
                running.started = now
            if running.started is not None and \
                    now >= running.started + plan.active_for / self.time_scale:
                del self._events[key]
                changes.append((register_key(plan), None))
                continue
            phase = "Scheduled" if running.started is None else "Started"
            if running.published != phase:
                running.published = phase
                changes.append((register_key(plan), render(running)))
        return changes


def register_key(plan: PlannedEvent) -> Key:
    return ("vms", plan.vm, "scheduledevents", plan.event_id)


def render(running: _Running) -> dict[str, Any]:
    plan = running.plan
    started = running.started is not None
    return {
        "EventType": plan.event_type, "ResourceType": "VirtualMachine",
        "Resources": list(plan.resources), "EventStatus": "Started" if started else "Scheduled",
        "NotBefore": "" if started else email.utils.formatdate(running.not_before,
                                                               usegmt=True),
        "Description": plan.description, "EventSource": plan.event_source,
        "DurationInSeconds": plan.duration,
    }


def _seconds(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(key)
    return float(value)
