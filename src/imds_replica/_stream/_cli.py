"""``imds-replica stream create|info`` and ``imds-replica publish``: the regional side.

``publish`` reads events as JSON lines — exactly what ``imds-replica log dump`` prints, so
a host's log can be replayed into the stream — and publishes them with compare-and-set
(see ``_publisher``). It prints ``published N, superseded N, refused N`` and exits 1 if
anything was refused (bad lines included: each is named with its line number on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import trio

from .._codec import parse_json
from .._errors import ConfigError, ValidationError
from .._event import Event
from ._transport import ConnectOptions, NotFound, TransportError
from ._wire import (
    STREAM_SOURCE_RE,
    check_consumer_names,
    check_host,
    check_source,
    consumer_names,
    stream_name,
    stream_subjects,
)

if TYPE_CHECKING:  # the NATS client loads only when a command talks to NATS
    from ._bridge import Connection

EXIT_OK = 0
EXIT_REFUSED = 1  # publish: something was refused; stream create: the stream differs
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3  # NATS unreachable or answering errors


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nats", action="append", required=True, metavar="URL",
                   help="a NATS server URL (repeatable)")
    p.add_argument("--cluster", required=True, help="the cluster (stream IMDS_<CLUSTER>)")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--credentials", metavar="FILE", help="a NATS creds file")
    p.add_argument("--tls-ca", metavar="FILE", help="CA bundle for the servers' TLS")


def register(top: Any) -> None:
    """Add ``stream`` and ``publish`` to the ``imds-replica`` subcommands."""
    stream = top.add_parser("stream", help="the cluster's JetStream stream")
    sub = stream.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create the stream, or check the one there")
    _connection_args(create)
    create.add_argument("--max-consumers", type=int, required=True, metavar="N",
                        help="consumers the stream allows (one per host and stream source)")
    create.add_argument("--replicas", type=int, default=1, metavar="R")
    info = sub.add_parser("info", help="print the stream's configuration and state")
    _connection_args(info)
    perms = sub.add_parser(
        "permissions", help="print each host's NATS users entry (deploy/nats/imds-west.conf "
        "shows the layout); refuses hosts and sources whose consumer names collide")
    perms.add_argument("--cluster", required=True, help="the cluster (stream IMDS_<CLUSTER>)")
    perms.add_argument("--source", action="append", required=True, metavar="NAME",
                       help="a stream source every host reads (repeatable)")
    perms.add_argument("hosts", nargs="+", metavar="HOST")
    publish = top.add_parser("publish", help="publish events (JSON lines) with compare-and-set")
    _connection_args(publish)
    scope = publish.add_mutually_exclusive_group(required=True)
    scope.add_argument("--host", help="publish to this host's subjects")
    scope.add_argument("--all-hosts", action="store_true",
                       help="publish to the cluster-wide _all subjects")
    publish.add_argument("file", nargs="?", default="-", metavar="FILE",
                         help="JSON lines as `imds-replica log dump` prints (default: stdin)")
    publish.add_argument("--window", type=int, default=1000, metavar="N",
                         help="subjects per pipelined compare-and-set round")


def _options(args: argparse.Namespace) -> ConnectOptions:
    return ConnectOptions(
        servers=tuple(args.nats), name="imds-replica", user=args.user,
        password=args.password,
        credentials=Path(args.credentials) if args.credentials else None,
        tls_ca=Path(args.tls_ca) if args.tls_ca else None)


def main(args: argparse.Namespace) -> int:
    try:
        if args.area == "stream" and args.command == "permissions":
            print(permissions(args.cluster, args.hosts, args.source), end="")
            return EXIT_OK
        options = _options(args)
        stream_name(args.cluster)
        if args.area == "publish":
            if args.host is not None:
                check_host(args.host)
            errors: list[str] = []
            if args.file == "-":
                events = list(read_events(sys.stdin, errors))
            else:
                try:
                    with open(args.file, encoding="utf-8") as handle:
                        events = list(read_events(handle, errors))
                except OSError as exc:
                    print(f"imds-replica: {args.file}: {exc.strerror}", file=sys.stderr)
                    return EXIT_USAGE
            if args.host is not None:  # e.g. "x" and "x-all" for one host: refused
                check_consumer_names((args.host, source) for source in sorted(
                    {e.source for e in events if STREAM_SOURCE_RE.match(e.source)}))
            return trio.run(_publish, args, options, events, errors)
        if args.command == "create":
            return trio.run(_create, args, options)
        return trio.run(_info, args, options)
    except ConfigError as exc:
        print(f"imds-replica: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TransportError as exc:
        print(f"imds-replica: NATS: {exc.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def host_allow(cluster: str, host: str, sources: Sequence[str]) -> tuple[list[str], list[str]]:
    """One host's NATS permissions (subscribe, publish allow lists) for ``sources``: its
    own and the cluster's subjects and inbox, stream info, and per source its two
    consumers, each created on the create subject that names its filter (docs/fleet.md)."""
    stream = stream_name(cluster)
    check_host(host)
    subscribe = [f"imds.{cluster}.{host}.>", f"imds.{cluster}._all.>", f"_INBOX_{host}.>"]
    publish = [f"$JS.API.STREAM.INFO.{stream}"]
    for source in sources:
        own, everyone = consumer_names(host, source)
        publish += [f"$JS.API.CONSUMER.CREATE.{stream}.{own}.imds.{cluster}.{host}.{source}.*",
                    f"$JS.API.CONSUMER.CREATE.{stream}.{everyone}.imds.{cluster}._all."
                    f"{source}.*"]
        publish += [f"$JS.API.CONSUMER.{verb}.{stream}.{name}"
                    for verb in ("DELETE", "INFO", "MSG.NEXT") for name in (own, everyone)]
    return subscribe, publish


def permissions(cluster: str, hosts: Sequence[str], sources: Sequence[str]) -> str:
    """``users`` entries for ``hosts`` (passwords to replace), after refusing any host and
    source whose consumer name another host or source would share."""
    check_consumer_names((host, source) for host in hosts for source in sources)
    out = []
    for host in dict.fromkeys(hosts):
        subscribe, publish = host_allow(cluster, host, sources)
        allow = "".join(f"        {json.dumps(p)},\n" for p in publish)
        out.append(f"{{\n  user: {json.dumps(host)}, password: \"{host}-change-me\"\n"
                   f"  permissions: {{\n    subscribe: {{ allow: {json.dumps(subscribe)} }}\n"
                   f"    publish: {{\n      allow: [\n{allow}      ]\n    }}\n  }}\n}}\n")
    return "".join(out)


#: Stream settings the contract fixes: key in stream info -> the value it must have.
def _wanted(args: argparse.Namespace) -> dict[str, Any]:
    return {"subjects": stream_subjects(args.cluster), "max_msgs_per_subject": 1,
            "max_age": 0, "discard": "new", "max_consumers": args.max_consumers,
            "num_replicas": args.replicas}


async def _create(args: argparse.Namespace, options: ConnectOptions) -> int:
    if args.max_consumers < 1 or args.replicas < 1:
        raise ConfigError("--max-consumers and --replicas must be >= 1", key="max-consumers")
    from ._bridge import Connection

    name = stream_name(args.cluster)
    conn = await Connection.open(options, give_up_after=options.first_connect_bound)
    try:
        try:
            info = await _retrying_info(conn, name)
        except NotFound:
            info = await _retrying_add(conn, args, name)
            print(f"created {name}: subjects {info['config']['subjects']}, max consumers "
                  f"{args.max_consumers}, replicas {args.replicas}")
            return EXIT_OK
        config = info["config"]
        wrong = [f"{key}: is {config.get(key)!r}, want {want!r}"
                 for key, want in _wanted(args).items() if config.get(key) != want]
        if wrong:
            for line in wrong:
                print(f"imds-replica: stream {name} differs: {line}", file=sys.stderr)
            return EXIT_REFUSED
        print(f"{name} exists as wanted")
        return EXIT_OK
    finally:
        await conn.aclose()


async def _retrying_info(conn: Connection, name: str) -> dict[str, Any]:
    # A JetStream cluster answers nothing until its meta leader is elected: retry a bit.
    for attempt in range(20):
        try:
            return await conn.stream_info(name)
        except NotFound:
            raise
        except TransportError:
            if attempt == 19:
                raise
            await trio.sleep(0.5)
    raise AssertionError("unreachable")


async def _retrying_add(conn: Connection, args: argparse.Namespace,
                        name: str) -> dict[str, Any]:
    # A JetStream cluster refuses R3 streams until its meta leader is elected: retry a bit.
    for attempt in range(20):
        try:
            return await conn.add_stream(name=name, subjects=stream_subjects(args.cluster),
                                         max_consumers=args.max_consumers,
                                         replicas=args.replicas)
        except TransportError:
            if attempt == 19:
                raise
            await trio.sleep(0.5)
    raise AssertionError("unreachable")


async def _info(args: argparse.Namespace, options: ConnectOptions) -> int:
    from ._bridge import Connection

    conn = await Connection.open(options, give_up_after=options.first_connect_bound)
    try:
        info = await conn.stream_info(stream_name(args.cluster))
    finally:
        await conn.aclose()
    print(json.dumps(info, default=str, sort_keys=True, indent=2))
    return EXIT_OK


def read_events(stream: IO[str], errors: list[str]) -> Iterator[Event]:
    """Events of JSON lines; a bad line is named in ``errors`` and skipped."""
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            event = Event.from_dict(parse_json(line))
            check_source(event.source)
        except (ValidationError, ConfigError) as exc:
            errors.append(f"line {number}: {exc.message}")
            continue
        yield event


async def _publish(args: argparse.Namespace, options: ConnectOptions, events: list[Event],
                   errors: list[str]) -> int:
    from ._publisher import Publisher, PublishReport

    report = PublishReport(0, 0, len(errors), tuple(errors))
    if events:
        async with Publisher.connect(options, cluster=args.cluster,
                                     window=args.window) as publisher:
            report += await publisher.publish(events, host=args.host)
    for error in report.errors:
        print(f"imds-replica: refused: {error}", file=sys.stderr)
    print(f"published {report.published}, superseded {report.superseded}, "
          f"refused {report.refused}")
    return EXIT_REFUSED if report.refused else EXIT_OK
