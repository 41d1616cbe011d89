"""The telemetry subcommands of ``imds-server``: ``probe``, ``logs fetch|query|report|compact``,
``collect``.

``register(subparsers)`` is called by the server's CLI. Each command's implementation is
imported only when it runs, so ``imds-server serve`` does not pay for DuckDB.
"""

from __future__ import annotations

import argparse

from .._help import DefaultsHelpFormatter


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``probe``, ``logs`` (``fetch``, ``query``) and ``collect`` to ``subparsers``."""
    probe = subparsers.add_parser(
        "probe", help="dial tone: probe a metadata endpoint like a VM would",
        formatter_class=DefaultsHelpFormatter,
        description="Send real metadata requests (with 'Metadata: true'), check status and "
        "body, report success, latency and uptime ratio.\n\nExit status: 0 when the last "
        "probe succeeded, 1 when it failed (the service is down), 2 on bad arguments "
        "(including a URL that is not an http(s) URL).")
    probe.add_argument("url", help="e.g. http://169.254.169.254/metadata/instance?api-version="
                       "2021-02-01")
    probe.add_argument("--interval", type=float, default=10.0, help="seconds between probes")
    probe.add_argument("--count", type=int, default=1, help="probes to send (0: forever)")
    probe.add_argument("--timeout", type=float, default=2.0, help="seconds per probe")
    probe.add_argument("--expect", default=None,
                       help="a string the body must contain (default: a JSON body)")
    probe.add_argument("--metrics-listen", default=None, metavar="HOST:PORT",
                       help="serve probe_success and probe_duration_seconds at /metrics")
    probe.add_argument("--json", action="store_true", help="one JSON object per probe")
    probe.set_defaults(func=_run_probe)

    logs = subparsers.add_parser("logs", help="fetch or query service logs",
                                 description="Fetch log lines from a running server's admin "
                                 "API, or query collected log files with DuckDB.")
    logs_sub = logs.add_subparsers(dest="logs_command", required=True)
    fetch = logs_sub.add_parser(
        "fetch", help="stream matching log lines from a server's admin /logs",
        description="Stream matching log lines from a server's admin GET /logs.",
        formatter_class=DefaultsHelpFormatter)
    fetch.add_argument("--from", dest="admin_url", required=True, metavar="ADMIN_URL",
                       help="e.g. http://127.0.0.1:8081")
    _add_filters(fetch)
    fetch.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for lines")
    fetch.set_defaults(func=_run_fetch)

    query = logs_sub.add_parser(
        "query", help="query collected (and local) log files with DuckDB",
        description="Query collected (and local) log files with DuckDB: canned reports "
        "(--list) or free SQL over the view 'logs'. Needs the optional 'query' extra: "
        "pip install 'imds-replica[query]'.", formatter_class=DefaultsHelpFormatter)
    query.add_argument("--store", action="append", default=[], metavar="DIR",
                       help="a collector store (cluster=/machine=/date= partitions)")
    query.add_argument("--local", action="append", default=[], metavar="LOG_DIR",
                       help="a server's local (cold path) log directory")
    what = query.add_mutually_exclusive_group()
    what.add_argument("--report", default=None, help="a canned report (--list to see them)")
    what.add_argument("--sql", default=None,
                      help="free SQL over the view 'logs' (see docs/telemetry.md)")
    what.add_argument("--list", action="store_true", help="list the canned reports")
    _add_scope(query)
    query.add_argument("--regex", default=None, help="pattern for the 'grep' report")
    query.add_argument("--bucket", default="1 hour", help="time bucket for time reports")
    query.add_argument("--limit", type=int, default=20, help="rows for top-N reports")
    query.add_argument("--format", choices=("table", "csv", "json"), default="table")
    query.set_defaults(func=_run_query)

    report = logs_sub.add_parser(
        "report", help="charts per cluster as one self-contained HTML file",
        description="p90 latency over time, answers by status, requests by route, the "
        "api-version distribution and (with probe lines) uptime, per cluster, as inline "
        "SVG in one HTML file that opens without network. Needs the 'charts' extra.")
    report.add_argument("--store", action="append", default=[], metavar="DIR",
                        help="a collector store")
    report.add_argument("--local", action="append", default=[], metavar="LOG_DIR",
                        help="a server's local (cold path) log directory")
    _add_scope(report)
    report.add_argument("--html", required=True, metavar="OUT", help="the HTML file to write")
    report.set_defaults(func=_run_report)

    compact = logs_sub.add_parser(
        "compact", help="turn a collector store's batch files into Parquet parts",
        description="Compact every date=/cluster= partition's batch files into one Parquet "
        "part (idempotent, crash-safe; queries see each line once at every instant). "
        "'imds-server collect' runs this on a schedule.")
    compact.add_argument("--store", required=True, metavar="DIR")
    compact.add_argument("--min-age", type=float, default=0.0, metavar="SECONDS",
                         help="only batch files at least this old (default 0: all)")
    compact.add_argument("--json", action="store_true", help="print the summary as JSON")
    compact.set_defaults(func=_run_compact)

    collect = subparsers.add_parser(
        "collect", help="warm-path collector: receive log batches and store them",
        formatter_class=DefaultsHelpFormatter,
        description="Receive the warm path's log batches from servers (POST /v1/batches) "
        "and store each once, partitioned by cluster, machine and date, for "
        "'imds-server logs query --store DIR'.")
    collect.add_argument("--listen", default="127.0.0.1:8090", metavar="HOST:PORT",
                         help="address to receive batches on")
    collect.add_argument("--store", required=True, metavar="DIR",
                         help="the store directory (created if missing)")
    collect.add_argument("--compact-every", type=float, default=900.0, metavar="S",
                         help="compact the store every S seconds (0: never)")
    collect.add_argument("--compact-min-age", type=float, default=600.0, metavar="S",
                         help="compact batch files at least S seconds old")
    collect.set_defaults(func=_run_collect)


def _add_scope(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", default=None, help="only this cluster")
    parser.add_argument("--machine", default=None, help="only this machine")
    parser.add_argument("--since", default=None,
                        help="ISO-8601 time, unix seconds or -2h/-30m/-1d (inclusive)")
    parser.add_argument("--until", default=None,
                        help="ISO-8601 time, unix seconds or -2h/-30m/-1d (exclusive)")


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", default=None, help="ISO-8601 time or unix seconds")
    parser.add_argument("--until", default=None, help="ISO-8601 time or unix seconds")
    parser.add_argument("--level", default=None, help="minimum level (debug, info, ...)")
    parser.add_argument("--grep", default=None, help="regular expression over the line")
    parser.add_argument("--limit", type=int, default=None, help="at most this many lines")


def _run_probe(args: argparse.Namespace) -> int:
    from ._probe import probe_main

    return probe_main(args)


def _run_fetch(args: argparse.Namespace) -> int:
    from ._fetch import fetch_main

    return fetch_main(args)


def _run_query(args: argparse.Namespace) -> int:
    from ._query import query_main

    return query_main(args)


def _run_report(args: argparse.Namespace) -> int:
    from ._report import report_main

    return report_main(args)


def _run_compact(args: argparse.Namespace) -> int:
    from ._compact import compact_main

    return compact_main(args)


def _run_collect(args: argparse.Namespace) -> int:
    from ._collector import collect_main

    return collect_main(args)
