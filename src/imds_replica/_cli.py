"""The ``imds-replica`` command: ``imds-replica log verify|dump|stats|compact|repair DIR``,
and the fleet side: ``imds-replica stream create|info`` and ``imds-replica publish``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from ._errors import CorruptLogError, StorageError, ValidationError
from ._horizon import STATE_SOURCE, Horizons
from ._log import compact_log, dump_log, repair_log, stats_log, verify_log

EXIT_OK = 0
EXIT_CORRUPT = 1  # the log (or a snapshot) is damaged: what and where is on stderr
EXIT_USAGE = 2  # bad arguments (argparse's own code)
EXIT_UNUSABLE = 3  # not a log directory, a newer format, in use, or unreadable

_EPILOG = """\
exit status: 0 valid (a torn tail that the next open truncates counts as valid and is
reported), 1 corruption found (what and where on stderr), 2 usage error, 3 the directory
is not a usable log (not ours, newer format, locked by a running replica, unreadable).
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imds-replica", description="Inspect and maintain an imds-replica data directory.")
    parser.add_argument("--version", action="version", version=f"imds-replica {_version()}")
    top = parser.add_subparsers(dest="area", required=True, metavar="{log,stream,publish}")
    log = top.add_parser("log", help="the durable event log", epilog=_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = log.add_subparsers(dest="command", required=True)
    helps = {
        "verify": "check every segment and snapshot; exit 1 on corruption",
        "dump": "print every stored event once, one JSON object per line",
        "stats": "format version, records, segments, bytes, live keys, tombstones, version "
                 "range",
        "compact": "rewrite the log as its winning events (needs the replica stopped)",
        "repair": "move a damaged suffix aside into DIR/damaged/, keep its readable events, "
                  "roll back later cursors, say what was lost",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text, epilog=_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("dir", metavar="DIR", help="the log directory")
        if name == "stats":
            p.add_argument("--json", action="store_true", help="print one JSON object")
        if name == "compact":
            p.add_argument("--tombstones-before", type=int, metavar="VERSION",
                           help="hybrid-clock horizon: drop tombstones of hybrid-clock "
                                "sources with a version below VERSION that hide nothing "
                                "(counter-versioned tombstones are kept; default: keep "
                                "all; must exceed any source's delivery delay)")
            p.add_argument("--tombstones-older-than", type=float, metavar="SECONDS",
                           help="the same horizon as a wall-clock age: hybrid-clock "
                                "tombstones older than SECONDS ago")
            p.add_argument("--source-horizon", action="append", default=[],
                           metavar="SOURCE=VERSION",
                           help="an explicit horizon for one source, in its own version "
                                "space (the only way to drop a counter source's "
                                "tombstones); repeatable")
    _stream_commands().register(top)
    return parser


def _stream_commands() -> Any:
    # Imported here: the NATS client loads only for the commands that use it.
    from ._stream import _cli

    return _cli


def _version() -> str:
    try:
        return metadata.version("imds-replica")
    except metadata.PackageNotFoundError:  # run from a source tree
        return "unknown (not installed)"


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def _verify(directory: str) -> int:
    report = verify_log(directory)
    for note in report.notes:
        _out(f"note: {note}")
    for problem in report.problems:
        print(f"imds-replica: {directory}: {problem}", file=sys.stderr)
    if report.ok:
        _out(f"ok: {report.segments} segment(s), {report.records} records, "
             f"{report.events} events, {report.bytes} bytes")
        return EXIT_OK
    return EXIT_CORRUPT


def _dump(directory: str) -> int:
    for event in dump_log(directory):
        _out(json.dumps(event, ensure_ascii=False, separators=(", ", ": ")))
    return EXIT_OK


def _stats(directory: str, as_json: bool) -> int:
    report = stats_log(directory)
    fields: dict[str, Any] = {
        "format_version": report.format_version,
        "segment_format_versions": list(report.segment_versions),
        "records": report.records, "segments": report.segments, "bytes": report.bytes,
        "live_keys": report.live_keys, "tombstones": report.tombstones,
        "oldest_version": report.oldest_version, "newest_version": report.newest_version,
        "batches": report.batches, "events": report.events,
        "generation": report.generation, "snapshots": list(report.snapshots),
        "checkpoints": report.checkpoints,
    }
    if as_json:
        _out(json.dumps(fields, sort_keys=True))
    else:
        for key, value in fields.items():
            _out(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    return EXIT_OK


def _horizons(args: argparse.Namespace) -> Horizons | None:
    sources: dict[str, int] = {}
    for item in args.source_horizon:
        source, sep, version = item.partition("=")
        if not sep or not source or not version.strip().isdigit():
            raise ValidationError(f"--source-horizon {item!r}: expected SOURCE=VERSION "
                                  f"(VERSION a non-negative integer)")
        sources[source] = int(version)
    if args.tombstones_before is not None and args.tombstones_older_than is not None:
        raise ValidationError("--tombstones-before and --tombstones-older-than both give "
                              "the hybrid-clock horizon: use one")
    if args.tombstones_older_than is not None:
        return Horizons.age(args.tombstones_older_than, now=time.time(), sources=sources)
    if args.tombstones_before is None and not sources:
        return None
    return Horizons(args.tombstones_before, sources)


def _compact(directory: str, horizons: Horizons | None) -> int:
    report = compact_log(directory, horizons=horizons)
    for note in report.notes:
        _out(f"note: {note}")
    _out(f"compacted to generation {report.generation}: {report.bytes_before} -> "
         f"{report.bytes_after} bytes, {report.registers} registers kept, "
         f"{report.tombstones_dropped} tombstones dropped")
    return EXIT_OK


def _repair(directory: str) -> int:
    report = repair_log(directory)
    if report.damage is None:
        _out("nothing to repair: the log is valid")
        return EXIT_OK
    _out(f"damage: {report.damage}")
    _out(f"moved aside (kept) into {report.moved_to}:")
    for name in report.moved:
        _out(f"  {name}")
    _out(f"cut from the log: {report.lost_bytes} bytes; {report.salvaged_events} readable "
         f"events after the damage were written back (the merge does not depend on order)")
    _out(f"lost from the log: {report.lost_records} records ({report.lost_events} events) "
         f"still readable but not written back; everything stays in the moved files")
    _out(f"{report.cursors_rolled_back} cursor(s) recorded after the damage were rolled back; "
         f"sources resume from these cursors and redeliver what followed:")
    cursors = {s: c for s, c in report.cursors.items() if s != STATE_SOURCE}  # not a source
    for source, cursor in sorted(cursors.items()):
        _out(f"  {source}: {json.dumps(cursor)}")
    if not cursors:
        _out("  (no source cursors recorded: sources redeliver from their beginning)")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.area != "log":
        return int(_stream_commands().main(args))
    directory = args.dir
    try:
        if not os.path.isdir(directory):
            raise StorageError(f"{directory} is not a directory")
        if args.command == "verify":
            return _verify(directory)
        if args.command == "dump":
            return _dump(directory)
        if args.command == "stats":
            return _stats(directory, args.json)
        if args.command == "compact":
            return _compact(directory, _horizons(args))
        return _repair(directory)
    except ValidationError as exc:
        print(f"imds-replica: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except CorruptLogError as exc:
        print(f"imds-replica: {directory}: {exc.message}", file=sys.stderr)
        if args.command != "repair":
            print("imds-replica: `imds-replica log repair DIR` moves the damaged part aside",
                  file=sys.stderr)
        return EXIT_CORRUPT
    except StorageError as exc:
        print(f"imds-replica: {exc.message}", file=sys.stderr)
        return EXIT_UNUSABLE
    except BrokenPipeError:  # e.g. `dump | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:
        print(f"imds-replica: {directory}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNUSABLE


if __name__ == "__main__":
    sys.exit(main())
