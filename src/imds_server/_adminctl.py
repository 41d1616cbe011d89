"""``imds-server put`` and ``imds-server events``: change a field or a scheduled event
through a server's admin API without writing its JSON by hand.

Both send ``POST /events`` batches (source ``operator`` unless ``--source``) with versions
from the hybrid clock on this machine's wall time, so a later command wins over an earlier
one. ``events add`` on a test-mode server hands the event to its lifecycle (Scheduled, then
Started, then gone, as Azure runs it); on any other server it publishes the event as
``Scheduled`` and leaves the rest to the host agent. Exit status: 0 done, 1 the server
could not be reached or failed, 2 the request was refused (the server's reason is printed).
"""

from __future__ import annotations

import argparse
import email.utils
import json
import sys
import time
import uuid
from typing import Any

import httpx

from imds_replica import hlc_version

from ._help import DefaultsHelpFormatter

DEFAULT_ADMIN = "http://127.0.0.1:8081"
EVENT_TYPES = ("Reboot", "Redeploy", "Freeze", "Preempt", "Terminate")


def register(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    _common(common)
    put = sub.add_parser(
        "put", help="set (or delete) fields of a VM's document through the admin API",
        formatter_class=DefaultsHelpFormatter,
        description="Set fields of a VM's document: each PATH=VALUE sets one register, "
        "('vms', VMID, *PATH split at dots); VALUE is read as JSON when it parses "
        "(42, true, {\"a\": 1}, \"quoted\") and as a plain string otherwise.\n\n"
        "Example: imds-server put vm-1 compute.name=web-1 compute.tagsList="
        "'[{\"name\": \"env\", \"value\": \"prod\"}]' --delete compute.zone",
        parents=[common])
    put.add_argument("vm", metavar="VMID")
    put.add_argument("assignments", nargs="*", metavar="PATH=VALUE")
    put.add_argument("--delete", action="append", default=[], metavar="PATH",
                     help="delete this path (a tombstone); may repeat")
    put.add_argument("--caller", action="append", default=[], metavar="ADDRESS",
                     help="also map caller ADDRESS to this VM (('callers', ADDRESS))")
    put.set_defaults(func=_put)

    events = sub.add_parser(
        "events", help="list, add, postpone or remove a VM's scheduled events",
        formatter_class=DefaultsHelpFormatter,
        description="Scheduled events of one VM through the admin API. On a test-mode "
        "server 'add' runs the event's lifecycle (Scheduled, Started once approved or at "
        "NotBefore, gone after DurationInSeconds); elsewhere it publishes it as Scheduled.")
    what = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    listing = what.add_parser("list", help="the VM's events as its guest sees them",
                              parents=[common], formatter_class=DefaultsHelpFormatter)
    listing.add_argument("vm", metavar="VMID")
    add = what.add_parser("add", help="schedule an event", parents=[common],
                          formatter_class=DefaultsHelpFormatter)
    add.add_argument("vm", metavar="VMID")
    add.add_argument("--id", default=None, help="EventId (default: a new UUID)")
    add.add_argument("--type", default="Reboot", choices=EVENT_TYPES, help="EventType")
    add.add_argument("--not-before-in", type=float, default=None, metavar="SECONDS",
                     help="NotBefore this far ahead (default: Azure's notice for the type, "
                          "e.g. 900 for Reboot)")
    add.add_argument("--duration", type=int, default=-1, metavar="SECONDS",
                     help="DurationInSeconds (-1: unknown)")
    add.add_argument("--resource", action="append", default=[], metavar="NAME",
                     help="a VM name in Resources; may repeat")
    add.add_argument("--description", default="", help="Description")
    postpone = what.add_parser("postpone", help="move a Scheduled event's NotBefore "
                               "(test mode)", parents=[common],
                               formatter_class=DefaultsHelpFormatter)
    postpone.add_argument("vm", metavar="VMID")
    postpone.add_argument("event_id", metavar="EVENTID")
    postpone.add_argument("seconds", type=float, metavar="SECONDS")
    remove = what.add_parser("remove", help="take an event off the list", parents=[common],
                             formatter_class=DefaultsHelpFormatter)
    remove.add_argument("vm", metavar="VMID")
    remove.add_argument("event_id", metavar="EVENTID")
    events.set_defaults(func=_events)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin", default=DEFAULT_ADMIN, metavar="URL",
                        help="the server's admin listener")
    parser.add_argument("--source", default="operator", help="source name of the events")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def path_key(vm: str, path: str) -> list[str]:
    parts = [p for p in path.replace("/", ".").split(".") if p]
    if not parts:
        raise ValueError(f"{path!r} names no field (e.g. compute.name)")
    return ["vms", vm, *parts]


class _Versions:
    """HLC versions from this machine's wall clock, strictly increasing within a run."""

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last = max(hlc_version(int(time.time() * 1000)), self.last + 1)
        return self.last


def _put(args: argparse.Namespace) -> int:
    versions = _Versions()
    batch: list[dict[str, Any]] = []
    try:
        for assignment in args.assignments:
            path, sep, value = assignment.partition("=")
            if not sep:
                raise ValueError(f"{assignment!r} is not PATH=VALUE")
            batch.append({"source": args.source, "key": path_key(args.vm, path),
                          "version": versions.next(), "value": parse_value(value)})
        for path in args.delete:
            batch.append({"source": args.source, "key": path_key(args.vm, path),
                          "version": versions.next(), "deleted": True})
    except ValueError as exc:
        print(f"imds-server put: {exc}", file=sys.stderr)
        return 2
    batch += [{"source": args.source, "key": ["callers", address],
               "version": versions.next(), "value": args.vm} for address in args.caller]
    if not batch:
        print("imds-server put: nothing to do (give PATH=VALUE, --delete or --caller)",
              file=sys.stderr)
        return 2
    return _send(args, "POST", "/events", {"events": batch}, "put")


def _events(args: argparse.Namespace) -> int:
    command = args.events_command
    if command == "list":
        return _list(args)
    if command == "postpone":
        body = {"postpone": {"vm": args.vm, "id": args.event_id, "seconds": args.seconds}}
        return _send(args, "POST", "/testmode/scheduledevents", body, "events postpone")
    if command == "remove":
        key = ["vms", args.vm, "scheduledevents", args.event_id]
        batch = [{"source": args.source, "key": key, "version": _Versions().next(),
                  "deleted": True}]
        return _send(args, "POST", "/events", {"events": batch}, "events remove")
    event_id = args.id or str(uuid.uuid4()).upper()
    plan: dict[str, Any] = {"vm": args.vm, "id": event_id, "type": args.type,
                            "resources": args.resource, "description": args.description,
                            "duration": args.duration}
    if args.not_before_in is not None:
        plan["not-before-in"] = args.not_before_in
    status = _send(args, "POST", "/testmode/scheduledevents", plan, "events add",
                   missing_ok=True)
    if status != 404:
        return status
    # Not a test-mode server: publish the event as Scheduled; the host agent runs it.
    from .testmode._lifecycle import DEFAULT_LEAD

    lead = DEFAULT_LEAD[args.type] if args.not_before_in is None else args.not_before_in
    value = {"EventType": args.type, "ResourceType": "VirtualMachine",
             "Resources": args.resource, "EventStatus": "Scheduled",
             "NotBefore": email.utils.formatdate(time.time() + lead, usegmt=True),
             "Description": args.description, "EventSource": "Platform",
             "DurationInSeconds": args.duration}
    batch = [{"source": args.source, "key": ["vms", args.vm, "scheduledevents", event_id],
              "version": _Versions().next(), "value": value}]
    return _send(args, "POST", "/events", {"events": batch}, "events add")


def _list(args: argparse.Namespace) -> int:
    url = f"{args.admin.rstrip('/')}/view"
    try:
        response = httpx.get(url, params={"prefix": f"vms/{args.vm}/scheduledevents"},
                             timeout=args.timeout)
    except httpx.HTTPError as exc:
        print(f"imds-server events list: {url}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"imds-server events list: HTTP {response.status_code}: {_reason(response)}",
              file=sys.stderr)
        return 2 if response.status_code < 500 else 1
    for register in response.json().get("registers", []):
        if register.get("deleted"):
            continue
        value = register.get("value") or {}
        print(f"{register['key'][-1]}  {value.get('EventType', '')}  "
              f"{value.get('EventStatus', 'Scheduled')}  NotBefore="
              f"{value.get('NotBefore', '') or '-'}  Duration="
              f"{value.get('DurationInSeconds', -1)}")
    return 0


def _send(args: argparse.Namespace, method: str, path: str, body: Any, what: str, *,
          missing_ok: bool = False) -> int:
    url = args.admin.rstrip("/") + path
    try:
        response = httpx.request(method, url, json=body, timeout=args.timeout)
    except httpx.HTTPError as exc:
        print(f"imds-server {what}: {url}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    if missing_ok and response.status_code == 404:
        return 404
    if response.status_code != 200:
        print(f"imds-server {what}: HTTP {response.status_code}: {_reason(response)}",
              file=sys.stderr)
        return 2 if response.status_code < 500 else 1
    print(response.text.strip())
    return 0


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()
    return str(body.get("error", body)) if isinstance(body, dict) else response.text.strip()
