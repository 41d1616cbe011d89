"""Rendering a VM's document the way Azure guests read it.

Pure functions over plain JSON values: the tags rule (``tags`` and ``tagsList`` are two
renderings of one set), "every primitive a string", the instance document per api-version,
walking a sub-path, and the leaf rule of ``format=text``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ._versions import NETWORK_SINCE, gate_compute

_MISSING: Any = object()

Tag = tuple[str, str]


def parse_tags(value: Any) -> list[Tag]:
    """Tags as published in either form: a ``name:value;...`` string, a ``tagsList``-style
    list of ``{"name", "value"}``, or an object ``{name: value}``. Malformed parts are
    skipped rather than failing the whole document (guests complain about unparseable tags;
    we never make them worse)."""
    tags: list[Tag] = []
    if isinstance(value, str):
        for part in value.split(";"):
            if not part:
                continue
            name, _, val = part.partition(":")
            tags.append((name, val))
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and "name" in item:
                tags.append((stringify(item["name"]), stringify(item.get("value", ""))))
    elif isinstance(value, dict):
        tags.extend((str(k), stringify(v)) for k, v in value.items())
    return tags


def render_tags(tags: Sequence[Tag]) -> tuple[str, list[dict[str, str]]]:
    """The one set of tags as ``compute.tags`` and as ``compute.tagsList``."""
    return (";".join(f"{n}:{v}" for n, v in tags),
            [{"name": n, "value": v} for n, v in tags])


def stringify(value: Any) -> Any:
    """Every primitive as a string (``true``/``false`` for booleans, ``""`` for null);
    lists and objects keep their shape."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return [stringify(v) for v in value]
    if isinstance(value, dict):
        return {str(k): stringify(v) for k, v in value.items()}
    return str(value)


def render_instance(document: Any, version: str, *, tags_from_list: bool,
                    vm_id: str = "") -> dict[str, Any]:
    """``{"compute": ..., "network": ...}`` for one api-version.

    ``tags_from_list`` says which published form holds the newer set of tags (the caller
    decides it from register versions); the other form is rendered from it. ``vm_id`` (the
    ``VMID`` of the document's key) is ``compute.vmId`` unless a source published one.
    """
    doc = document if isinstance(document, dict) else {}
    compute = doc.get("compute")
    compute = dict(compute) if isinstance(compute, dict) else {}
    if vm_id and compute.get("vmId") in (None, ""):
        compute["vmId"] = vm_id
    primary, secondary = ("tagsList", "tags") if tags_from_list else ("tags", "tagsList")
    source = compute.get(primary)
    if source is None:
        source = compute.get(secondary)
    tags_string, tags_list = render_tags(parse_tags(source))
    compute["tags"] = tags_string
    compute["tagsList"] = tags_list
    out: dict[str, Any] = {"compute": stringify(gate_compute(compute, version))}
    if version >= NETWORK_SINCE:
        network = doc.get("network")
        network = dict(network) if isinstance(network, dict) else {}
        network.setdefault("interface", [])
        out["network"] = stringify(network)
    else:
        out["network"] = {}
    return out


def walk(value: Any, segments: Sequence[str]) -> Any:
    """The value at ``segments`` (object keys, array indexes in ASCII digits) or
    ``MISSING``."""
    for part in segments:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isascii() and part.isdigit() \
                and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


MISSING = _MISSING


def is_leaf(value: Any) -> bool:
    return not isinstance(value, (dict, list))


def to_json(value: Any) -> bytes:
    """Compact JSON, as Azure sends it; non-ASCII kept as UTF-8."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def to_text(value: Any) -> bytes:
    return stringify(value).encode() if is_leaf(value) else b""


def render_extended(document: Any) -> dict[str, Any]:
    """``extended`` (``extended=true``, 2021-03-01+) from ``("vms", VM, "extended")``:
    ``compute.ppsType`` a string (``None`` | ``Running`` | ``Savable``, default ``None``)
    and ``compute.hasCustomData`` a JSON **boolean** (cloud-init tests its truthiness, so a
    ``"false"`` string would read as true)."""
    doc = document if isinstance(document, dict) else {}
    ext = doc.get("extended")
    compute = ext.get("compute") if isinstance(ext, dict) else None
    compute = compute if isinstance(compute, dict) else {}
    pps = compute.get("ppsType")
    has = compute.get("hasCustomData", False)
    if isinstance(has, str):
        has = has.strip().lower() == "true"
    return {"compute": {"ppsType": pps if isinstance(pps, str) and pps else "None",
                        "hasCustomData": bool(has)}}


_LB_LISTS = ("publicIpAddresses", "inboundRules", "outboundRules")
_LB_PORTS = ("frontendPort", "backendPort")


def render_loadbalancer(value: dict[str, Any]) -> dict[str, Any]:
    """The ``loadbalancer`` object in the published shape: the three lists (present, maybe
    empty), strings everywhere except ports, which are JSON numbers as in Azure's sample."""
    out: dict[str, Any] = {}
    for name in _LB_LISTS:
        items = value.get(name)
        rows = []
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            row: dict[str, Any] = {}
            for key, val in item.items():
                if key in _LB_PORTS and isinstance(val, (int, str)) and \
                        not isinstance(val, bool) and str(val).isdigit():
                    row[key] = int(val)
                else:
                    row[key] = stringify(val)
            rows.append(row)
        out[name] = rows
    return out
