"""API versions: the published list, the error a guest relies on, and field gating.

Everything about "which version sees which field" is data in this module: ``FIELDS`` maps a
path inside ``compute`` to the version that introduced it (the wire reference's table),
and ``gate_compute`` is the one function that consults it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The 35 published versions, oldest first (the wire reference's list).
VERSIONS: tuple[str, ...] = (
    "2017-03-01", "2017-04-02", "2017-08-01", "2017-10-01", "2017-12-01",
    "2018-02-01", "2018-04-02", "2018-10-01", "2019-02-01", "2019-03-11",
    "2019-04-30", "2019-06-01", "2019-06-04", "2019-08-01", "2019-08-15",
    "2019-11-01", "2020-06-01", "2020-07-15", "2020-09-01", "2020-10-01",
    "2020-12-01", "2021-01-01", "2021-02-01", "2021-03-01", "2021-05-01",
    "2021-08-01", "2021-10-01", "2021-11-01", "2021-11-15", "2021-12-13",
    "2023-07-01", "2023-11-15", "2024-03-15", "2024-07-17", "2025-04-07",
)
KNOWN = frozenset(VERSIONS)
#: Scheduled events kept their own version line (guest agents send 2020-07-01 there);
#: those are accepted on ``/metadata/scheduledevents`` only. *(ours: tolerance)*
SCHEDULED_EVENTS_KNOWN = KNOWN | {"2017-11-01", "2019-01-01", "2020-07-01"}

NEWEST_THREE: tuple[str, ...] = tuple(reversed(VERSIONS[-3:]))
BAD_VERSION_MESSAGE = (
    "Bad request. api-version is invalid or was not specified in the request. "
    "For more information refer to aka.ms/azureimds"
)

_BASE = "2017-04-02"
#: Path inside ``compute`` -> version that introduced it. Children not listed inherit
#: their parent's version (``plan.name`` comes with ``plan``).
FIELDS: Mapping[tuple[str, ...], str] = {
    **{(name,): _BASE for name in (
        "location", "name", "offer", "osType", "platformFaultDomain",
        "platformUpdateDomain", "publisher", "sku", "version", "vmId", "vmSize")},
    ("placementGroupId",): "2017-08-01", ("resourceGroupName",): "2017-08-01",
    ("subscriptionId",): "2017-08-01", ("tags",): "2017-08-01",
    ("vmScaleSetName",): "2017-12-01", ("zone",): "2017-12-01",
    ("plan",): "2018-04-02", ("publicKeys",): "2018-04-02",
    ("azEnvironment",): "2018-10-01", ("provider",): "2018-10-01",
    ("resourceId",): "2019-03-11",
    ("storageProfile",): "2019-06-01",
    ("tagsList",): "2019-06-04",
    ("isHostCompatibilityLayerVm",): "2020-06-01",
    ("securityProfile",): "2020-06-01",
    ("securityProfile", "secureBootEnabled"): "2020-06-01",
    ("securityProfile", "virtualTpmEnabled"): "2020-06-01",
    ("osProfile",): "2020-07-15",
    ("osProfile", "adminUsername"): "2020-07-15",
    ("osProfile", "computerName"): "2020-07-15",
    ("licenseType",): "2020-09-01",
    ("osProfile", "disablePasswordAuthentication"): "2020-10-01",
    ("evictionPolicy",): "2020-12-01", ("priority",): "2020-12-01",
    ("userData",): "2021-01-01",
    ("extendedLocation",): "2021-03-01",
    ("virtualMachineScaleSet",): "2021-03-01",
    ("platformSubFaultDomain",): "2021-10-01",
    ("additionalCapabilities",): "2021-11-01",
    ("securityProfile", "encryptionAtHost"): "2021-11-01",
    ("host",): "2021-11-15", ("hostGroup",): "2021-11-15",
    ("securityProfile", "securityType"): "2021-12-13",
    ("physicalZone",): "2023-11-15",
}
#: Inside ``storageProfile``: path -> version that introduced it (``*``: every element of
#: a list). Gated fields are left out for older versions; those in ``_STORAGE_DEFAULTED``
#: are shown as ``""`` when the data lacks them (the "present as empty" rule).
STORAGE_FIELDS: Mapping[tuple[str, ...], str] = {
    ("imageReference", "communityGalleryImageId"): "2023-07-01",
    ("imageReference", "sharedGalleryImageId"): "2023-07-01",
    ("imageReference", "exactVersion"): "2023-07-01",
    ("resourceDisk", "size"): "2021-02-01",
    **{("dataDisks", "*", name): "2021-05-01" for name in (
        "bytesPerSecondThrottle", "diskCapacityBytes", "isSharedDisk", "isUltraDisk",
        "opsPerSecondThrottle")},
    ("osDisk", "encryptionSettings"): "2021-11-01",
    ("dataDisks", "*", "encryptionSettings"): "2021-11-01",
}
_STORAGE_DEFAULTED = frozenset(p for p in STORAGE_FIELDS if p[-1] != "encryptionSettings")
#: The shape of a field that is absent from the data: objects list their members.
_OBJECT_MEMBERS: Mapping[str, tuple[str, ...]] = {
    "plan": ("name", "product", "publisher"),
    "extendedLocation": ("type", "name"),
    "virtualMachineScaleSet": ("id",),
    "additionalCapabilities": ("hibernationEnabled",),
    "host": ("id",), "hostGroup": ("id",),
}
#: Objects whose members are objects too: the whole shape Azure renders, leaves ``""`` and
#: lists ``[]``. An absent one is rendered as this shape (as an absent ``plan`` is rendered
#: as its members), and a published one gets the members it lacks, so a guest reading
#: ``storageProfile.osDisk.name`` finds ``""`` rather than a 404 whichever the source sent.
_SHAPES: Mapping[str, Mapping[str, Any]] = {
    "storageProfile": {
        "dataDisks": [],
        "imageReference": {"id": "", "offer": "", "publisher": "", "sku": "", "version": ""},
        "osDisk": {"caching": "", "createOption": "", "diffDiskSettings": {"option": ""},
                   "diskSizeGB": "", "encryptionSettings": {"enabled": ""},
                   "image": {"uri": ""}, "managedDisk": {"id": "", "storageAccountType": ""},
                   "name": "", "osType": "", "vhd": {"uri": ""},
                   "writeAcceleratorEnabled": ""},
    },
}
_LISTS = frozenset({"publicKeys", "tagsList"})
#: Network fields date from the base version: before it the network is left out whole.
NETWORK_SINCE = _BASE


def is_known(version: str | None, *, scheduled_events: bool = False) -> bool:
    return version in (SCHEDULED_EVENTS_KNOWN if scheduled_events else KNOWN)


def bad_version_body() -> dict[str, Any]:
    return {"error": BAD_VERSION_MESSAGE, "newest-versions": list(NEWEST_THREE)}


def _default(path: tuple[str, ...], version: str) -> Any:
    """The value shown for a field the data does not have: ``""``, ``[]`` or an object."""
    name = path[-1]
    if len(path) == 1 and name in _LISTS:
        return []
    if len(path) == 1 and name in _SHAPES:
        return _filled({}, _SHAPES[name])
    if len(path) == 1 and name in _OBJECT_MEMBERS:
        return {member: "" for member in _OBJECT_MEMBERS[name]}
    children = [p for p in FIELDS if len(p) == len(path) + 1 and p[:-1] == path]
    if children:
        return {c[-1]: "" for c in children if FIELDS[c] <= version}
    if len(path) == 1 and name in ("osProfile", "securityProfile"):
        return {}
    return ""


def _filled(value: Mapping[str, Any], shape: Mapping[str, Any]) -> dict[str, Any]:
    """``value`` with every member of ``shape`` it lacks (recursively; a list or a leaf
    that is present is kept as published)."""
    out = dict(value)
    for member, default in shape.items():
        present = out.get(member)
        if present is None:
            out[member] = _filled({}, default) if isinstance(default, Mapping) \
                else list(default) if isinstance(default, list) else default
        elif isinstance(default, Mapping) and isinstance(present, Mapping):
            out[member] = _filled(present, default)
    return out


def gate_compute(compute: Mapping[str, Any], version: str) -> dict[str, Any]:
    """``compute`` as seen by ``version``: later fields left out, missing ones defaulted.

    Fields the table does not know (a source ahead of this server) are passed through.
    Versions compare as strings: they are all ``YYYY-MM-DD``.
    """
    out: dict[str, Any] = {}
    for path, since in FIELDS.items():
        if len(path) != 1 or since > version:
            continue
        name = path[0]
        value = compute.get(name, None)
        if value is None:
            out[name] = _default(path, version)
        elif isinstance(value, dict):
            out[name] = _gate_object(value, path, version)
            if name == "storageProfile":
                out[name] = gate_storage(out[name], version)
        else:
            out[name] = value
    for name, value in compute.items():
        if (name,) not in FIELDS:
            out[name] = value
    return dict(sorted(out.items()))


def _gate_object(value: Mapping[str, Any], path: tuple[str, ...], version: str) -> dict[str, Any]:
    out = dict(value)
    for child, since in FIELDS.items():
        if len(child) == len(path) + 1 and child[:-1] == path:
            if since > version:
                out.pop(child[-1], None)
            elif out.get(child[-1]) is None:
                out[child[-1]] = ""
    for member in _OBJECT_MEMBERS.get(path[-1], ()) if len(path) == 1 else ():
        if out.get(member) is None:
            out[member] = ""
    if len(path) == 1 and path[0] in _SHAPES:
        out = _filled(out, _SHAPES[path[0]])
    return out


def gate_storage(storage: Mapping[str, Any], version: str) -> dict[str, Any]:
    """``storageProfile`` as seen by ``version`` (see ``STORAGE_FIELDS``)."""
    out = dict(storage)
    for path, since in STORAGE_FIELDS.items():
        head = path[0]
        if path[1] == "*":
            disks = out.get(head)
            if isinstance(disks, list):
                out[head] = [_gate_member(d, path[2], since, version, path)
                             if isinstance(d, dict) else d for d in disks]
            continue
        member = out.get(head)
        if member is None and since <= version and path in _STORAGE_DEFAULTED:
            member = {}
        if isinstance(member, dict):
            out[head] = _gate_member(member, path[1], since, version, path)
    return out


def _gate_member(obj: Mapping[str, Any], name: str, since: str, version: str,
                 path: tuple[str, ...]) -> dict[str, Any]:
    out = dict(obj)
    if since > version:
        out.pop(name, None)
    elif out.get(name) is None and path in _STORAGE_DEFAULTED:
        out[name] = ""
    return out
