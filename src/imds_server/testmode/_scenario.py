"""Replayable scenarios: a list of timed steps, run from the moment the scenario starts.

::

    [{"at": 5, "event": {"vm": "V", "id": "E1", "type": "Reboot", "not-before-in": 60}},
     {"at": 10, "fault": {"path": "/metadata/*", "status": 410, "duration": 30}},
     {"at": 12, "put": {"vm": "V", "path": "compute.name", "value": "renamed"}},
     {"at": 13, "delete": {"vm": "V", "path": "compute.tagsList"}},
     {"at": 20, "postpone": {"vm": "V", "id": "E1", "seconds": 300}},
     {"at": 40, "clear-faults": true},
     {"at": 41, "events": [wire-form events]}]

``at`` is seconds from the start (divided by test mode's time scale, like every planned
duration). A step has exactly one action. Running the same list again replays it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from imds_replica import ClientError

ACTIONS = ("put", "delete", "event", "fault", "clear-faults", "postpone", "events")


@attrs.frozen
class Step:
    at: float
    action: str
    argument: Any


def parse_steps(data: Any) -> tuple[Step, ...]:
    if not isinstance(data, list):
        raise ClientError("a scenario is an array of steps")
    steps = []
    for index, item in enumerate(data):
        where = f"scenario[{index}]"
        if not isinstance(item, Mapping):
            raise ClientError(f"{where} must be an object")
        at = item.get("at")
        if isinstance(at, bool) or not isinstance(at, (int, float)) or at < 0:
            raise ClientError(f"{where}.at must be a number of seconds >= 0")
        actions = [a for a in item if a != "at"]
        if len(actions) != 1 or actions[0] not in ACTIONS:
            raise ClientError(f"{where} needs exactly one of {', '.join(ACTIONS)} "
                              f"(has {', '.join(actions) or 'none'})")
        action = actions[0]
        argument = item[action]
        if action in ("put", "delete", "postpone") and not isinstance(argument, Mapping):
            raise ClientError(f"{where}.{action} must be an object")
        if action in ("put", "delete") and not {"vm", "path"} <= set(argument):
            raise ClientError(f"{where}.{action} needs vm and path")
        if action == "put" and "value" not in argument:
            raise ClientError(f"{where}.put needs a value")
        steps.append(Step(float(at), action, argument))
    return tuple(sorted(steps, key=lambda s: s.at))


def key_of(vm: str, path: str) -> tuple[str, ...]:
    """``compute.name`` (or ``compute/name``) of VM ``vm`` as a view key."""
    parts = [p for p in path.replace("/", ".").split(".") if p]
    if not parts:
        raise ClientError("a path names at least a section (compute, network, ...)")
    return ("vms", vm, *parts)
