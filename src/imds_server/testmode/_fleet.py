"""A whole test fleet in one JSON or TOML file: VMs (documents, callers, identities, load
balancer, scheduled events), fault rules, and a scenario of timed steps.

::

    {"vms": {"VMID": {"callers": ["127.0.0.1"], "compute": {...}, "network": {...},
                      "tags": [{"name": "env", "value": "test"}],
                      "identity": {"systemAssigned": {...}, "userAssigned": {"RID": {...}}},
                      "loadbalancer": {...},
                      "scheduledevents": [{"id": "E1", "type": "Reboot",
                                           "not-before-in": 900, "duration": 600}]}},
     "events": [wire-form events, published as they are],
     "faults": [{"path": "/metadata/instance*", "status": 410, "duration": 30}],
     "scenario": [{"at": 5, "fault": {...}}, {"at": 10, "put": {...}}]}

Every section is optional. Documents are published at version 1 by the sources the demo
uses (``fabric`` for documents, ``tags`` for tags, ``hostnet`` for callers), so loading the
same file again changes nothing. Scheduled events are not published here: test mode's
lifecycle runs them (``_lifecycle``).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

from imds_replica import ClientError, ConfigError

from ._faults import FaultRule
from ._lifecycle import PlannedEvent
from ._scenario import Step, parse_steps

VERSION = 1
_VM_KEYS = {"callers", "compute", "network", "tags", "identity", "loadbalancer",
            "scheduledevents"}
_TOP_KEYS = {"vms", "events", "faults", "scenario"}
DEMO = "demo-fleet.json"


@attrs.frozen
class Fleet:
    events: tuple[dict[str, Any], ...] = ()
    planned: tuple[PlannedEvent, ...] = ()
    faults: tuple[FaultRule, ...] = ()
    scenario: tuple[Step, ...] = ()


def load_fleet(path: Path | str | None) -> Fleet:
    """The fleet in ``path`` (``.toml`` or JSON), or the demo fleet shipped with the
    package when ``path`` is None. Raises ``ConfigError`` naming the file and the fault."""
    if path is None:
        text = resources.files(__package__).joinpath(DEMO).read_text(encoding="utf-8")
        return parse_fleet(json.loads(text), where=DEMO)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key="fleet") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise ConfigError(f"{path} is not valid {kind}: {exc}", key="fleet") from None
    return parse_fleet(data, where=str(path))


def parse_fleet(data: Any, *, where: str = "fleet") -> Fleet:
    try:
        return _parse(data)
    except ClientError as exc:
        raise ConfigError(f"{where}: {exc.message}", key="fleet") from None


def _parse(data: Any) -> Fleet:
    if not isinstance(data, Mapping):
        raise ClientError("a fleet is an object with vms, events, faults, scenario")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ClientError(f"unknown section {sorted(unknown)[0]!r} "
                          f"(known: {', '.join(sorted(_TOP_KEYS))})")
    events: list[dict[str, Any]] = []
    planned: list[PlannedEvent] = []
    vms = data.get("vms", {})
    if not isinstance(vms, Mapping):
        raise ClientError("vms must be an object {VMID: {...}}")
    for vm, spec in vms.items():
        vm_events, vm_planned = _vm(str(vm), spec)
        events += vm_events
        planned += vm_planned
    raw = data.get("events", [])
    if not isinstance(raw, list) or not all(isinstance(e, Mapping) for e in raw):
        raise ClientError("events must be an array of wire-form events")
    events += [dict(e) for e in raw]
    faults = data.get("faults", [])
    if not isinstance(faults, list):
        raise ClientError("faults must be an array")
    rules = tuple(FaultRule.from_mapping(f) for f in faults)
    return Fleet(tuple(events), tuple(planned), rules, parse_steps(data.get("scenario", [])))


def _vm(vm: str, spec: Any) -> tuple[list[dict[str, Any]], list[PlannedEvent]]:
    if not isinstance(spec, Mapping):
        raise ClientError(f"vms.{vm} must be an object")
    unknown = set(spec) - _VM_KEYS
    if unknown:
        raise ClientError(f"vms.{vm}: unknown field {sorted(unknown)[0]!r} "
                          f"(known: {', '.join(sorted(_VM_KEYS))})")
    out = []
    for section in ("compute", "network", "loadbalancer"):
        if section in spec:
            out.append(_event("fabric", ("vms", vm, section), spec[section]))
    identity = spec.get("identity", {})
    if not isinstance(identity, Mapping):
        raise ClientError(f"vms.{vm}.identity must be an object")
    if "systemAssigned" in identity:
        out.append(_event("fabric", ("vms", vm, "identity", "systemAssigned"),
                          identity["systemAssigned"]))
    user = identity.get("userAssigned", {})
    if not isinstance(user, Mapping):
        raise ClientError(f"vms.{vm}.identity.userAssigned must be an object "
                          "{RESOURCE_ID: {clientId, objectId, tenantId}}")
    for resource_id, ident in user.items():
        out.append(_event("fabric", ("vms", vm, "identity", "userAssigned", resource_id),
                          ident))
    if "tags" in spec:
        out.append(_event("tags", ("vms", vm, "compute", "tagsList"), spec["tags"]))
    callers = spec.get("callers", [])
    if not isinstance(callers, Sequence) or isinstance(callers, str):
        raise ClientError(f"vms.{vm}.callers must be an array of addresses")
    out += [_event("hostnet", ("callers", str(address)), vm) for address in callers]
    scheduled = spec.get("scheduledevents", [])
    if not isinstance(scheduled, list):
        raise ClientError(f"vms.{vm}.scheduledevents must be an array")
    return out, [PlannedEvent.from_mapping(item, vm=vm) for item in scheduled]


def _event(source: str, key: tuple[str, ...], value: Any) -> dict[str, Any]:
    return {"source": source, "key": list(key), "version": VERSION, "value": value}


def demo_fleet() -> dict[str, Any]:
    """The fleet ``--demo`` seeds (``imds_server._demo``) in the fleet-file form: how
    ``demo-fleet.json`` is made (``python -m imds_server.testmode > FILE``)."""
    from .. import _demo

    vms: dict[str, dict[str, Any]] = {}
    for event in _demo.events(0.0):
        key, value = event["key"], event["value"]
        if key[0] == "callers":
            vms.setdefault(value, {}).setdefault("callers", []).append(key[1])
            continue
        spec = vms.setdefault(key[1], {})
        rest = tuple(key[2:])
        if rest in (("compute",), ("network",), ("loadbalancer",)):
            spec[rest[0]] = value
        elif rest == ("compute", "tagsList"):
            spec["tags"] = value
        elif rest == ("identity", "systemAssigned"):
            spec.setdefault("identity", {})["systemAssigned"] = value
        elif rest[:2] == ("identity", "userAssigned") and len(rest) == 3:
            spec.setdefault("identity", {}).setdefault("userAssigned", {})[rest[2]] = value
        elif rest[:1] == ("scheduledevents",) and len(rest) == 2:
            spec.setdefault("scheduledevents", []).append({
                "id": rest[1], "type": value["EventType"], "resources": value["Resources"],
                "description": value["Description"], "not-before-in": 900,
                "duration": value["DurationInSeconds"]})
        else:
            raise ValueError(f"the demo publishes {key}, which a fleet file cannot express")
    order = ("callers", "compute", "network", "tags", "identity", "loadbalancer",
             "scheduledevents")
    return {"vms": {vm: {k: spec[k] for k in order if k in spec} for vm, spec in vms.items()}}
