"""``imds-server logs report --html OUT``: the seed's charts, one self-contained HTML file.

Per cluster: p90 latency over time, answers by status, requests by route, the api-version
distribution, and uptime over time when the store holds dial-tone probe lines
(``logger = 'imds_server.probe'``, ``success``: what ``imds-server probe --json`` prints).
The numbers come from the same ``logs`` view as ``logs query`` (same filters, same
pruning) and are embedded next to the charts as JSON (``<script type="application/json"
id="report-data">``), so what a chart shows can be checked against a query.

Why matplotlib, server-side SVG: the file must open with no network and no script, on
any machine, years later; an inline SVG is text in the page, and matplotlib is the most
widely kept plotting library. It is heavy (numpy), hence the ``charts`` extra; without it
the command fails with one line saying what to install.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import io
import json
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ._query import Filters, filters_from, logs_view_sql
from ._store import store_lock

CHARTS = ("latency", "status", "routes", "api_versions", "uptime")
TITLES = {"latency": "p90 latency (ms)", "status": "answers by status",
          "routes": "requests by route", "api_versions": "api-version distribution",
          "uptime": "uptime (probe successes)"}
_ACCESS = "logger = 'imds_server.access'"
MISSING = "logs report needs matplotlib: pip install 'imds-replica[charts]'"


class ReportError(ValueError):
    """Bad arguments, no data, or the charts extra missing (one line, for the user)."""


def bucket_for(span: dt.timedelta) -> str:
    """A time bucket giving a readable number of points for the span."""
    if span <= dt.timedelta(hours=12):
        return "10 minutes"
    if span <= dt.timedelta(days=3):
        return "1 hour"
    return "6 hours"


def report_data(stores: Sequence[Path], local_dirs: Sequence[Path],
                filters: Filters | None = None) -> dict[str, Any]:
    """The numbers behind every chart: ``{"bucket", "clusters": {name: {chart: rows}}}``.
    Rows are ``[x, y]`` lists (times as ISO-8601 strings); ``uptime`` is None without probes."""
    import duckdb

    with ExitStack() as locks:
        for store in stores:
            locks.enter_context(store_lock(store, exclusive=False))
        view = logs_view_sql(stores, local_dirs, filters or Filters())
        if view is None:
            raise ReportError("no log files found in the given --store/--local directories")
        with duckdb.connect() as con:
            con.execute("SET enable_progress_bar = false")  # output stays the answer
            try:
                con.execute(view)
                first, last = con.execute(
                    "SELECT min(time), max(time) FROM logs").fetchone() or (None, None)
            except duckdb.Error as error:
                raise ReportError(f"cannot read the logs: {error}") from None
            if first is None:
                raise ReportError("no log lines match the given filters")
            bucket = bucket_for(last - first)
            queries = {
                "latency": "SELECT cluster, strftime(time_bucket(INTERVAL '{b}', time), "
                           "'%Y-%m-%dT%H:%M:%SZ') AS x, round(quantile_cont(seconds, 0.9) "
                           "* 1000, 4) AS y FROM logs WHERE {a} AND NOT coalesce(watch, false)"
                           " AND seconds IS NOT NULL GROUP BY ALL ORDER BY 1, 2",
                "status": "SELECT cluster, status AS x, count(*) AS y FROM logs WHERE {a} "
                          "GROUP BY ALL ORDER BY 1, 2",
                "routes": "SELECT cluster, coalesce(route, '(none)') AS x, count(*) AS y "
                          "FROM logs WHERE {a} GROUP BY ALL ORDER BY 1, 3 DESC, 2",
                "api_versions": "SELECT cluster, coalesce(api_version, '(none)') AS x, "
                                "count(*) AS y FROM logs WHERE {a} GROUP BY ALL "
                                "ORDER BY 1, 3 DESC, 2",
                "uptime": "SELECT cluster, strftime(time_bucket(INTERVAL '{b}', time), "
                          "'%Y-%m-%dT%H:%M:%SZ') AS x, round(avg(success::INTEGER), 6) AS y "
                          "FROM logs WHERE logger = 'imds_server.probe' AND success IS NOT "
                          "NULL GROUP BY ALL ORDER BY 1, 2",
            }
            clusters: dict[str, dict[str, Any]] = {}
            for chart, sql in queries.items():
                for cluster, x, y in con.execute(sql.format(b=bucket, a=_ACCESS)).fetchall():
                    name = cluster if cluster is not None else "(local)"
                    entry = clusters.setdefault(name, {c: [] for c in CHARTS})
                    entry[chart].append([x, y])
    for entry in clusters.values():
        if not entry["uptime"]:
            entry["uptime"] = None
    return {"bucket": bucket, "first": first.isoformat() + "Z", "last": last.isoformat() + "Z",
            "clusters": dict(sorted(clusters.items()))}


def render_html(data: dict[str, Any], title: str) -> str:
    """One page, no external reference: inline SVG charts and the data as JSON."""
    try:
        import matplotlib
    except ImportError:
        raise ReportError(MISSING) from None
    matplotlib.use("svg")
    sections = []
    for cluster, charts in data["clusters"].items():
        figures = []
        for chart in CHARTS:
            rows = charts[chart]
            if rows is None:
                continue
            svg = _chart_svg(chart, rows, f"{cluster}-{chart}")
            figures.append(f'<figure class="chart" data-chart="{chart}" '
                           f'data-cluster="{html.escape(cluster)}"><figcaption>'
                           f'{TITLES[chart]}</figcaption>{svg}</figure>')
        sections.append(f'<section class="cluster" data-cluster="{html.escape(cluster)}">'
                        f'<h2>cluster {html.escape(cluster)}</h2><div class="grid">'
                        + "".join(figures) + "</div></section>")
    payload = json.dumps(data, sort_keys=True).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ margin: 0; padding: 0 16px; font: 14px sans-serif; background: #fff; color: #222; }}
header {{ height: 72px; }} header p {{ margin: 6px 0 0; }}
h1 {{ margin: 0; padding-top: 12px; font-size: 20px; }}
h2 {{ height: 28px; margin: 8px 0 0; font-size: 16px; }}
.grid {{ display: grid; grid-template-columns: 600px 600px; grid-auto-rows: 330px; gap: 0; }}
figure {{ margin: 0; width: 600px; height: 330px; overflow: hidden; }}
figcaption {{ height: 20px; font-weight: bold; }} figure svg {{ width: 600px; height: 300px; }}
</style></head><body>
<header><h1>{html.escape(title)}</h1>
<p>{html.escape(data["first"])} to {html.escape(data["last"])}, buckets of
{html.escape(data["bucket"])}</p></header>
{"".join(sections)}
<script type="application/json" id="report-data">{payload}</script>
</body></html>
"""


def _chart_svg(chart: str, rows: list[list[Any]], salt: str) -> str:
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.rcParams["svg.hashsalt"] = salt  # ids unique per chart within one page
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: small, crisp
    fig = Figure(figsize=(6.0, 3.0), dpi=100)
    ax = fig.add_subplot()
    xs = [r[0] for r in rows]
    ys = [r[1] for r in rows]
    if chart in ("latency", "uptime"):
        times = [dt.datetime.fromisoformat(x.replace("Z", "+00:00")) for x in xs]
        values = [y * 100 for y in ys] if chart == "uptime" else ys
        days = [t.timestamp() / 86400 for t in times]  # matplotlib's dates: days since 1970
        ax.plot(days, values,
                color="#1f77b4" if chart == "latency" else "#2ca02c",
                marker="." if len(times) < 50 else None)
        ax.xaxis_date()
        ax.set_ylabel("ms" if chart == "latency" else "% of probes")
        if chart == "uptime":
            ax.set_ylim(min([*values, 90.0]) - 1, 100.5)
        fig.autofmt_xdate()
    elif chart == "status":
        colors = ["#2ca02c" if x < 300 else "#ff7f0e" if x < 500 else "#d62728" for x in xs]
        ax.bar([str(x) for x in xs], ys, color=colors)
        ax.set_ylabel("answers")
    else:
        ax.barh([str(x) for x in xs][::-1], ys[::-1], color="#9467bd")
        ax.set_xlabel("requests")
        ax.tick_params(axis="y", labelsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = io.StringIO()
    fig.savefig(out, format="svg")
    svg = out.getvalue()
    return svg[svg.index("<svg"):]  # inline: no XML declaration or doctype


def report_main(args: argparse.Namespace) -> int:
    try:
        filters = filters_from(args)
        try:
            import matplotlib  # noqa: F401 - checked first: a clear line, before any query
        except ImportError:
            raise ReportError(MISSING) from None
        data = report_data([Path(p) for p in args.store], [Path(p) for p in args.local],
                           filters)
        scope = ", ".join(f"{k} {v}" for k, v in (("cluster", args.cluster),
                          ("machine", args.machine)) if v) or "all clusters"
        page = render_html(data, f"imds logs report: {scope}")
    except ValueError as error:
        print(f"logs report: {error}", file=sys.stderr)
        return 2
    Path(args.html).write_text(page, encoding="utf-8")
    charts = sum(1 for c in data["clusters"].values() for v in c.values() if v is not None)
    print(f"logs report: wrote {args.html} ({len(data['clusters'])} clusters, {charts} charts)")
    return 0
