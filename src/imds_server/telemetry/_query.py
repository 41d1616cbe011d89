"""``imds-server logs query``: DuckDB over collected batches and local log files.

Every source becomes one view, ``logs``, with explicit column types: DuckDB's detection
would read api-versions such as ``2021-02-01`` as dates. Collector stores contribute their
Hive partitions (``cluster``, ``machine``, ``date``); local files get ``cluster`` and
``machine`` NULL. Canned reports are SQL over that view; ``--sql`` runs anything else.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._cold import log_files

#: Column → DuckDB type of every JSON line (keys a line lacks are NULL; others ignored).
COLUMNS: dict[str, str] = {
    "time": "TIMESTAMP", "level": "VARCHAR", "logger": "VARCHAR", "message": "VARCHAR",
    "request_id": "VARCHAR", "vm": "VARCHAR", "caller": "VARCHAR", "method": "VARCHAR",
    "route": "VARCHAR", "path": "VARCHAR", "api_version": "VARCHAR", "status": "INTEGER",
    "bytes": "BIGINT", "seconds": "DOUBLE", "refused": "VARCHAR", "watch": "BOOLEAN",
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
             "WHERE regexp_matches(message, $regex) "
             "ORDER BY time, cluster, machine, message LIMIT {limit}"),
    "levels": ("lines by cluster, machine and level",
               "SELECT cluster, machine, level, count(*) AS lines, min(time) AS first, "
               "max(time) AS last FROM logs GROUP BY ALL ORDER BY ALL"),
}
_BUCKET_RE = re.compile(r"^\d+ (second|minute|hour|day)s?$")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _columns_sql() -> str:
    return "{" + ", ".join(f"{_quote(k)}: {_quote(v)}" for k, v in COLUMNS.items()) + "}"


def logs_view_sql(stores: Sequence[Path], local_dirs: Sequence[Path]) -> str | None:
    """``CREATE VIEW logs`` over whatever files exist; None when there are none."""
    select = ", ".join(COLUMNS)
    parts = []
    for store in stores:
        if any(store.glob("cluster=*/machine=*/date=*/*.jsonl.gz")):
            pattern = _quote(str(store / "cluster=*/machine=*/date=*/*.jsonl.gz"))
            parts.append(
                f"SELECT {select}, cluster, machine FROM read_json({pattern}, "
                f"format='newline_delimited', columns={_columns_sql()}, "
                "hive_partitioning=true, hive_types={'cluster': 'VARCHAR', "
                "'machine': 'VARCHAR', 'date': 'DATE'})")
    files = [str(p) for d in local_dirs for p in log_files(d)]
    if files:
        listing = "[" + ", ".join(_quote(f) for f in files) + "]"
        parts.append(f"SELECT {select}, NULL::VARCHAR AS cluster, NULL::VARCHAR AS machine "
                     f"FROM read_json({listing}, format='newline_delimited', "
                     f"columns={_columns_sql()})")
    if not parts:
        return None
    return "CREATE VIEW logs AS " + " UNION ALL ".join(parts)


def run_query(stores: Sequence[Path], local_dirs: Sequence[Path], *, report: str | None = None,
              sql: str | None = None, regex: str | None = None, bucket: str = "1 hour",
              limit: int = 20) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of a report or free SQL. ``ValueError`` on bad arguments."""
    import duckdb

    view = logs_view_sql(stores, local_dirs)
    if view is None:
        raise ValueError("no log files found in the given --store/--local directories")
    params: dict[str, Any] = {}
    if report is not None:
        if report not in REPORTS:
            raise ValueError(f"unknown report {report!r}; have: {', '.join(REPORTS)}")
        if not _BUCKET_RE.match(bucket):
            raise ValueError(f"bad --bucket {bucket!r} (e.g. '5 minutes', '1 hour')")
        sql = REPORTS[report][1].format(bucket=bucket, limit=int(limit))
        if report == "grep":
            if not regex:
                raise ValueError("the grep report needs --regex")
            params["regex"] = regex
    if sql is None:
        raise ValueError("give --report or --sql")
    with duckdb.connect() as con:
        con.execute(view)
        try:
            cursor = con.execute(sql, params) if params else con.execute(sql)
        except duckdb.Error as error:
            raise ValueError(f"query failed: {error}") from None
        names = [d[0] for d in cursor.description or ()]
        return names, cursor.fetchall()


def query_main(args: argparse.Namespace) -> int:
    if args.list:
        for name, (title, _) in REPORTS.items():
            print(f"{name:14} {title}")
        return 0
    try:
        names, rows = run_query([Path(p) for p in args.store], [Path(p) for p in args.local],
                                report=args.report, sql=args.sql, regex=args.regex,
                                bucket=args.bucket, limit=args.limit)
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
