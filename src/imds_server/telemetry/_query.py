"""``imds-server logs query``: DuckDB over collected logs (Parquet parts and batch files
not compacted yet) and local log files.

Every source becomes one view, ``logs``, with explicit column types: DuckDB's detection
would read api-versions such as ``2021-02-01`` as dates. Collector stores contribute
``cluster``, ``machine`` and ``date`` (the partition: the UTC day the batch was sealed,
the line's own day or the next); local files get them NULL. ``--cluster``, ``--machine``,
``--since`` and ``--until`` restrict the view itself, and the store's files are pruned
by them before DuckDB sees a path (``_store.list_files``), then DuckDB prunes again from
any ``date``/``cluster`` filter of the SQL. Canned reports are SQL over that view;
``--sql`` runs anything else.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import re
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import attrs

from ._cold import log_files
from ._store import Prune, list_files, store_lock

#: Column → DuckDB type of every JSON line (keys a line lacks are NULL; others ignored).
COLUMNS: dict[str, str] = {
    "time": "TIMESTAMP", "level": "VARCHAR", "logger": "VARCHAR", "message": "VARCHAR",
    "request_id": "VARCHAR", "vm": "VARCHAR", "caller": "VARCHAR", "method": "VARCHAR",
    "route": "VARCHAR", "path": "VARCHAR", "api_version": "VARCHAR", "status": "INTEGER",
    "bytes": "BIGINT", "seconds": "DOUBLE", "refused": "VARCHAR", "watch": "BOOLEAN",
    "success": "BOOLEAN",  # dial-tone probe lines (``imds-server probe --json``)
}
_ACCESS = "logger = 'imds_server.access'"
REPORTS: dict[str, tuple[str, str]] = {
    "status": ("answers by status over time",
               f"SELECT time_bucket(INTERVAL '{{bucket}}', time) AS bucket, status, "
               f"count(*) AS answers FROM logs WHERE {_ACCESS} GROUP BY ALL ORDER BY ALL"),
    "api-versions": ("answers by api-version",
                     "SELECT coalesce(api_version, '(none)') AS api_version, "
                     "count(*) AS answers, count(*) FILTER (WHERE status >= 400) AS errors "
                     f"FROM logs WHERE {_ACCESS} GROUP BY ALL ORDER BY answers DESC, 1"),
    "latency": ("p90 latency per route per hour (ms)",
                "SELECT time_bucket(INTERVAL '1 hour', time) AS hour, route, "
                "count(*) AS answers, round(quantile_cont(seconds, 0.9) * 1000, 3) AS p90_ms "
                f"FROM logs WHERE {_ACCESS} AND NOT coalesce(watch, false) "
                "GROUP BY ALL ORDER BY ALL"),
    "callers": ("top callers",
                "SELECT caller, any_value(vm) AS vm, count(*) AS answers, "
                "count(*) FILTER (WHERE status >= 400) AS errors "
                f"FROM logs WHERE {_ACCESS} GROUP BY caller ORDER BY answers DESC, caller "
                "LIMIT {limit}"),
    "grep": ("lines whose message matches --regex",
             "SELECT time, cluster, machine, level, logger, message FROM logs "
             "WHERE regexp_matches(message, {regex}) "
             "ORDER BY time, cluster, machine, message LIMIT {limit}"),
    "levels": ("lines by cluster, machine and level",
               "SELECT cluster, machine, level, count(*) AS lines, min(time) AS first, "
               "max(time) AS last FROM logs GROUP BY ALL ORDER BY ALL"),
}
_BUCKET_RE = re.compile(r"^\d+ (second|minute|hour|day)s?$")
_RELATIVE_RE = re.compile(r"^-(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: A batch is sealed at most this long after its first line (``warm.interval`` is 120 s
#: by default): its partition date may be the day after the line's.
SEAL_SLACK = dt.timedelta(days=1)


@attrs.frozen
class Filters:
    """Restrictions applied to the ``logs`` view itself (and used to prune files)."""

    cluster: str | None = None
    machine: str | None = None
    since: dt.datetime | None = None  # naive UTC, inclusive
    until: dt.datetime | None = None  # naive UTC, exclusive

    def prune(self) -> Prune:
        return Prune(
            clusters=None if self.cluster is None else frozenset([self.cluster]),
            first_date=None if self.since is None else self.since.date(),
            last_date=None if self.until is None else (self.until + SEAL_SLACK).date())

    def where(self, *, partitioned: bool = True) -> str:
        """The SQL condition (empty: none); ``partitioned`` adds the partition terms
        (``date``) that let DuckDB skip files, for sources that have them."""
        terms = []
        if self.cluster is not None:
            terms.append(f"cluster = {quote(self.cluster)}")
        if self.machine is not None:
            terms.append(f"machine = {quote(self.machine)}")
        prune = self.prune()
        if prune.first_date is not None:
            if partitioned:
                terms.append(f"date >= DATE {quote(prune.first_date.isoformat())}")
            terms.append(f"time >= TIMESTAMP {quote(str(self.since))}")
        if prune.last_date is not None:
            if partitioned:
                terms.append(f"date <= DATE {quote(prune.last_date.isoformat())}")
            terms.append(f"time < TIMESTAMP {quote(str(self.until))}")
        return " AND ".join(terms)


def parse_time(value: str, name: str, *, now: float | None = None) -> dt.datetime:
    """ISO-8601 (``Z`` or an offset; naive is UTC), unix seconds, or ``-90m``/``-2h``/``-1d``
    before now; naive UTC. ``ValueError`` naming ``name`` otherwise."""
    text = value.strip()
    relative = _RELATIVE_RE.match(text)
    try:
        if relative:
            seconds = float(relative[1]) * _UNITS[relative[2]]
            stamp = (time.time() if now is None else now) - seconds
            return dt.datetime.fromtimestamp(stamp, dt.UTC).replace(tzinfo=None)
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return dt.datetime.fromtimestamp(float(text), dt.UTC).replace(tzinfo=None)
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"bad {name} {value!r}: expected ISO-8601 (2024-05-01T10:00:00Z), "
                         "unix seconds, or -30m/-2h/-1d") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    return parsed


def quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def columns_sql() -> str:
    return "{" + ", ".join(f"{quote(k)}: {quote(v)}" for k, v in COLUMNS.items()) + "}"


def _listing(paths: Sequence[str]) -> str:
    return "[" + ", ".join(quote(p) for p in paths) + "]"


def logs_view_sql(stores: Sequence[Path], local_dirs: Sequence[Path],
                  filters: Filters = Filters()) -> str | None:
    """``CREATE VIEW logs`` over whatever files exist; None when there are none. Call with
    each store's shared lock held (``store_lock``) until the query has run."""
    select = ", ".join(COLUMNS)
    hive = ("hive_partitioning=true, hive_types={'cluster': 'VARCHAR', 'machine': 'VARCHAR', "
            "'date': 'DATE'}")
    # No union_by_name: it reads every file's schema when binding, which defeats DuckDB's
    # own partition pruning; every part has the schema of COLUMNS (the compactor writes it).
    hive_parts = "hive_partitioning=true, hive_types={'cluster': 'VARCHAR', 'date': 'DATE'}"
    where = filters.where()
    cond = f" WHERE {where}" if where else ""
    parts = []
    for store in stores:
        files = list_files(store, filters.prune())
        if files.batch_globs:
            parts.append(
                f"SELECT {select}, cluster, machine, date FROM read_json("
                f"{_listing(files.batch_globs)}, format='newline_delimited', "
                f"columns={columns_sql()}, {hive}){cond}")
        if files.parquet:
            parts.append(f"SELECT {select}, cluster, machine, date FROM read_parquet("
                         f"{_listing(files.parquet)}, {hive_parts}){cond}")
    if filters.cluster is None and filters.machine is None:
        local = [str(p) for d in local_dirs for p in log_files(d)]
        if local:
            local_where = filters.where(partitioned=False)
            parts.append(f"SELECT {select}, NULL::VARCHAR AS cluster, "
                         "NULL::VARCHAR AS machine, NULL::DATE AS date "
                         f"FROM read_json({_listing(local)}, format='newline_delimited', "
                         f"columns={columns_sql()})"
                         + (f" WHERE {local_where}" if local_where else ""))
    if not parts:
        return None
    return "CREATE VIEW logs AS " + " UNION ALL ".join(parts)


def report_sql(report: str, *, regex: str | None = None, bucket: str = "1 hour",
               limit: int = 20) -> str:
    """The SQL of a canned report. The grep pattern is inlined as a literal (quoted) so
    DuckDB's optimizer sees it: a pattern without regex syntax runs as ``contains``."""
    if report not in REPORTS:
        raise ValueError(f"unknown report {report!r}; have: {', '.join(REPORTS)}")
    if not _BUCKET_RE.match(bucket):
        raise ValueError(f"bad --bucket {bucket!r} (e.g. '5 minutes', '1 hour')")
    if report == "grep" and not regex:
        raise ValueError("the grep report needs --regex")
    return REPORTS[report][1].format(bucket=bucket, limit=int(limit),
                                     regex=quote(regex or ""))


def run_query(stores: Sequence[Path], local_dirs: Sequence[Path], *, report: str | None = None,
              sql: str | None = None, regex: str | None = None, bucket: str = "1 hour",
              limit: int = 20, filters: Filters = Filters(),
              ) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of a report or free SQL. ``ValueError`` on bad arguments."""
    import duckdb

    if report is not None:
        sql = report_sql(report, regex=regex, bucket=bucket, limit=limit)
    if sql is None:
        raise ValueError("give --report or --sql")
    with ExitStack() as locks:
        for store in stores:
            locks.enter_context(store_lock(store, exclusive=False))
        view = logs_view_sql(stores, local_dirs, filters)
        if view is None:
            raise ValueError("no log files found in the given --store/--local directories"
                             + (" for the given filters" if filters.where() else ""))
        with duckdb.connect() as con:
            con.execute("SET enable_progress_bar = false")  # output stays the answer
            try:
                con.execute(view)  # binds every file: a damaged one fails here
                cursor = con.execute(sql)
            except duckdb.Error as error:
                raise ValueError(f"query failed: {error}") from None
            names = [d[0] for d in cursor.description or ()]
            return names, cursor.fetchall()


def filters_from(args: argparse.Namespace) -> Filters:
    """``--cluster --machine --since --until`` of a command; ``ValueError`` when bad."""
    since = None if args.since is None else parse_time(args.since, "--since")
    until = None if args.until is None else parse_time(args.until, "--until")
    if since is not None and until is not None and until <= since:
        raise ValueError(f"--until {args.until!r} is not after --since {args.since!r}")
    return Filters(cluster=args.cluster, machine=args.machine, since=since, until=until)


def query_main(args: argparse.Namespace) -> int:
    if args.list:
        for name, (title, _) in REPORTS.items():
            print(f"{name:14} {title}")
        return 0
    try:
        names, rows = run_query([Path(p) for p in args.store], [Path(p) for p in args.local],
                                report=args.report, sql=args.sql, regex=args.regex,
                                bucket=args.bucket, limit=args.limit,
                                filters=filters_from(args))
    except ValueError as error:
        print(f"logs query: {error}", file=sys.stderr)
        return 2
    write_rows(names, rows, args.format)
    return 0


def write_rows(names: list[str], rows: list[tuple[Any, ...]], fmt: str) -> None:
    out = sys.stdout
    if fmt == "json":
        for row in rows:
            out.write(json.dumps(dict(zip(names, row, strict=True)), default=str) + "\n")
    elif fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(names)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
    else:
        cells: list[list[str]] = [names]
        cells += [["" if v is None else str(v) for v in row] for row in rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(names))]
        for n, cell_row in enumerate(cells):
            out.write("  ".join(c.ljust(w) for c, w in zip(cell_row, widths, strict=True))
                      .rstrip()
                      + "\n")
            if n == 0:
                out.write("  ".join("-" * w for w in widths) + "\n")
