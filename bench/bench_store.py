"""The collector store at fleet scale: canned reports over batch files vs compacted Parquet.

1. Generate ``BENCH_STORE_LINES`` (default 10 million) access and component lines over 30
   days, ``CLUSTERS`` clusters and ``MACHINES`` machines each, as the collector stores them:
   ``cluster=/machine=/date=/<batch id>.jsonl.gz``, ``BATCHES_PER_DAY`` batch files per
   machine and day. DuckDB writes them (a Python renderer would take longer than
   everything measured here); each line has the fields the server's renderer writes.
2. Time every canned report (``logs query``'s ``run_query``: listing, view, query) for one
   cluster-day and for all 30 days (every cluster) over the batch files: the baseline.
3. ``compact_store`` (timed), then the same reports over the Parquet parts, same run.

Figures: p50 of ``RUNS`` runs each (the 30-day baseline runs ``BASELINE_RUNS`` times: one
run reads every batch file). Goals (issue 16): one cluster-day < 1 s, 30 days < 10 s.
``BENCH_STORE_LINES=2000000 python -m bench store`` runs a smaller store.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import write_results
from imds_server.telemetry import REPORTS, compact_store, run_query
from imds_server.telemetry._query import Filters

LINES = int(os.environ.get("BENCH_STORE_LINES", 10_000_000))
DAYS = 30
CLUSTERS = 20
MACHINES = 5
BATCHES_PER_DAY = int(os.environ.get("BENCH_STORE_BATCHES_PER_DAY", 4))
RUNS = int(os.environ.get("BENCH_STORE_RUNS", 5))
BASELINE_RUNS = int(os.environ.get("BENCH_STORE_BASELINE_RUNS", 1))
START = dt.datetime(2024, 5, 1)
REGEX = "fsync failed"  # a literal: the cheap path (contains)


def generate(store: Path) -> int:
    """Write the batch files, one COPY per cluster-day; returns lines written."""
    import duckdb

    per_day = LINES // (DAYS * CLUSTERS)
    with duckdb.connect() as con:
        con.execute("SET preserve_insertion_order = false")
        for day in range(DAYS):
            date = (START + dt.timedelta(days=day)).date().isoformat()
            for c in range(CLUSTERS):
                cluster = f"c{c:02d}"
                staging = store / ".gen" / f"{date}-{cluster}"
                staging.parent.mkdir(parents=True, exist_ok=True)
                con.execute(_generate_sql(staging, date, c, per_day))
                _as_batches(store, staging, cluster, date)
    shutil.rmtree(store / ".gen", ignore_errors=True)
    return per_day * DAYS * CLUSTERS


def _generate_sql(out: Path, date: str, c: int, n: int) -> str:
    seed = c * 1000 + int(date[-2:])
    access = "h % 100 >= 5"  # 95% access lines, 5% component lines
    return f"""
    COPY (
      WITH rows AS (
        SELECT i, TIMESTAMP '{date}' + to_microseconds(
                 CAST(i * (86400000000 // {n}) AS BIGINT)) AS t,
               CAST(hash(i, {seed}) % 1000000007 AS BIGINT) AS h,
               CAST(hash(i, {seed} + 1) % 1000000007 AS BIGINT) AS h2,
               'm' || CAST(i % {MACHINES} AS VARCHAR) AS machine
        FROM range({n}) r(i))
      SELECT strftime(t, '%Y-%m-%dT%H:%M:%S.%fZ') AS time,
             CASE WHEN {access} THEN 'info' WHEN h % 7 = 0 THEN 'error' ELSE 'warning' END
               AS level,
             CASE WHEN {access} THEN 'imds_server.access' ELSE 'imds_replica' END AS logger,
             CASE WHEN {access} THEN 'GET ' || route || ' ' || CAST(status AS VARCHAR)
                  WHEN h % 7 = 0 THEN 'fsync failed: EIO on segment ' || CAST(h2 % 50 AS VARCHAR)
                  ELSE 'source fabric stale for ' || CAST(h2 % 600 AS VARCHAR) || 's' END
               AS message,
             CASE WHEN {access} THEN printf('%016x', h2) END AS request_id,
             CASE WHEN {access} THEN 'vm-' || CAST(h2 % 40 AS VARCHAR) END AS vm,
             CASE WHEN {access} THEN '10.0.' || CAST(h2 % 40 AS VARCHAR) || '.4' END AS caller,
             CASE WHEN {access} THEN 'GET' END AS method,
             CASE WHEN {access} THEN route END AS route,
             CASE WHEN {access} THEN route END AS path,
             CASE WHEN {access} THEN api_version END AS api_version,
             CASE WHEN {access} THEN status END AS status,
             CASE WHEN {access} THEN 200 + CAST(h2 % 3000 AS INTEGER) END AS bytes,
             CASE WHEN {access} THEN round(0.0001 + (h2 % 1000) / 1000000.0
                                           * (1 + (h % 10 = 0)::INTEGER * 20), 6) END AS seconds,
             CASE WHEN {access} AND status >= 400 THEN 'bad-api-version' END AS refused,
             CASE WHEN {access} THEN route = '/metadata/identity/oauth2/token' AND h % 50 = 0
               END AS watch,
             machine, (hour(t) * {BATCHES_PER_DAY}) // 24 AS batch
      FROM (SELECT *,
              ['/metadata/instance', '/metadata/instance/compute', '/metadata/attested/document',
               '/metadata/identity/oauth2/token', '/metadata/scheduledevents'][1 + h2 % 5]
                AS route,
              ['2021-02-01', '2021-12-13', '2023-07-01', '2019-06-04', '2017-08-01',
               '2020-09-01', 'banana', NULL][1 + h % 8] AS api_version,
              CASE WHEN h % 100 < 93 THEN 200 WHEN h % 100 < 96 THEN 404
                   WHEN h % 100 < 98 THEN 400 WHEN h % 100 < 99 THEN 429 ELSE 503 END AS status
            FROM rows)
      ORDER BY machine, batch, time
    ) TO '{out}' (FORMAT json, COMPRESSION gzip, PARTITION_BY (machine, batch))
    """


def _as_batches(store: Path, staging: Path, cluster: str, date: str) -> None:
    """DuckDB's ``machine=M/batch=B/data_0.json.gz`` → the collector's layout and names."""
    day = dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC)
    for path in staging.glob("machine=*/batch=*/*.json.gz"):
        machine = path.parent.parent.name.split("=", 1)[1]
        batch = int(path.parent.name.split("=", 1)[1])
        sealed = day + dt.timedelta(hours=24 * (batch + 1) / BATCHES_PER_DAY, seconds=-1)
        ns = int(sealed.timestamp()) * 1_000_000_000
        target = (store / f"cluster={cluster}" / f"machine={machine}" / f"date={date}"
                  / f"{ns:020d}-{os.urandom(8).hex()}.jsonl.gz")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, target)
    shutil.rmtree(staging)


SCOPES: dict[str, Filters] = {
    "cluster-day": Filters(cluster="c07", since=START + dt.timedelta(days=14),
                           until=START + dt.timedelta(days=15)),
    "30 days": Filters(),
}


def time_reports(store: Path, runs: dict[str, int]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for scope, filters in SCOPES.items():
        for report in REPORTS:
            times = []
            rows: list[Any] = []
            for _ in range(runs[scope]):
                started = time.perf_counter()
                _, rows = run_query([store], [], report=report, regex=REGEX, limit=20,
                                    filters=filters)
                times.append(time.perf_counter() - started)
            out[f"{scope} {report}"] = {"p50_s": statistics.median(times), "runs": times,
                                        "rows": len(rows)}
            print(f"  {scope:12} {report:13} p50 {statistics.median(times):8.3f} s "
                  f"({len(times)} runs, {len(rows)} rows)", flush=True)
    return out


def cli_seconds(store: Path) -> float:
    """The whole command for one cluster-day (process start, imports, query): p50 of 3."""
    scope = SCOPES["cluster-day"]
    assert scope.since is not None
    assert scope.until is not None
    args = [sys.executable, "-m", "imds_server.telemetry", "logs", "query", "--store",
            str(store), "--cluster", str(scope.cluster), "--since", scope.since.isoformat(),
            "--until", scope.until.isoformat(), "--report", "status"]
    times = []
    for _ in range(3):
        started = time.perf_counter()
        done = subprocess.run(args, check=False, capture_output=True)
        if done.returncode != 0:  # reported, the figures measured so far are still written
            print(f"  CLI failed: {done.stderr.decode()[-500:]}", flush=True)
            return float("nan")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="bench-store-", dir=os.environ.get("BENCH_TMP")))
    store = base / "store"
    try:
        started = time.perf_counter()
        lines = generate(store)
        generated = time.perf_counter() - started
        files = sum(1 for _ in store.glob("cluster=*/machine=*/date=*/*.jsonl.gz"))
        batch_bytes = sum(p.stat().st_size for p in store.rglob("*.jsonl.gz"))
        print(f"  generated {lines:,} lines in {files:,} batch files "
              f"({batch_bytes / 1e6:.0f} MB) in {generated:.0f} s", flush=True)
        print("  over batch files:", flush=True)
        before = time_reports(store, {"cluster-day": RUNS, "30 days": BASELINE_RUNS})
        cli_batches = cli_seconds(store)
        started = time.perf_counter()
        result = compact_store(store)
        compacted = time.perf_counter() - started
        assert not result.failed, result.failed
        parts = list(store.glob("compacted/date=*/cluster=*/part-*.parquet"))
        part_bytes = sum(p.stat().st_size for p in parts)
        print(f"  compacted into {len(parts)} parts ({part_bytes / 1e6:.0f} MB) in "
              f"{compacted:.0f} s", flush=True)
        print("  over Parquet:", flush=True)
        after = time_reports(store, {"cluster-day": RUNS, "30 days": RUNS})
        cli_parquet = cli_seconds(store)  # the command as a user runs it (fresh process)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    figures: dict[str, Any] = {
        "lines": lines, "days": DAYS, "clusters": CLUSTERS, "machines_per_cluster": MACHINES,
        "batch_files": files, "batch_bytes": batch_bytes, "generate_s": generated,
        "compact_s": compacted, "parts": len(parts), "part_bytes": part_bytes,
        "batches": before, "parquet": after,
        "cli_cluster_day_status_s": {"batches": cli_batches, "parquet": cli_parquet},
        "note": "measured while other work shared the 2-core machine",
    }
    rows = []
    for key in before:
        rows.append([key, before[key]["p50_s"], after[key]["p50_s"],
                     before[key]["p50_s"] / after[key]["p50_s"]])
    rows.append(["CLI cluster-day status (whole process)", cli_batches, cli_parquet,
                 cli_batches / cli_parquet])
    md = write_results("store", figures, ["report (p50 s)", "batch files", "Parquet", "ratio"],
                       rows)
    with md.open("a") as f:
        f.write(f"\n{lines:,} lines, {DAYS} days x {CLUSTERS} clusters x {MACHINES} machines; "
                f"{files:,} batch files ({batch_bytes / 1e6:.0f} MB) → {len(parts)} Parquet "
                f"parts ({part_bytes / 1e6:.0f} MB); generation {generated:.0f} s, compaction "
                f"{compacted:.0f} s. p50 of {RUNS} runs ({BASELINE_RUNS} for the 30-day "
                "baseline). Measured while other work shared the 2-core machine.\n")
