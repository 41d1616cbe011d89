"""Cost of telemetry on the read path: the same server, telemetry off vs on, same run.

1. Read path (the figure the issue bounds: metrics on must cost <= 10% of read-path
   throughput). Real ``imds-server serve --demo --rate-limit 0`` processes, one per variant,
   each with its own ``[telemetry]`` table:

   - ``off``: ``metrics = false, access_log = false`` (the server gets ``NullObserver``);
   - ``metrics``: request metrics only;
   - ``on``: the default, metrics + one JSON access line per request into the cold file.

   ``wrk`` (32 keep-alive connections, ``GET /metadata/instance?api-version=2021-02-01``)
   runs in its own process pinned to core 1 and the servers are pinned to core 0, so the
   load generator's CPU is not in the server's figure and the server (its event loop *and*
   its log-writer thread) has exactly one core: every µs telemetry spends, on whichever
   thread, comes out of throughput. Runs alternate off/metrics/on for ``ROUNDS`` short
   rounds, the order rotated each round (the machines are shared and noisy, so drift hits
   every variant alike). CPU comes from runs on ``wrk``'s plain path and the scheduler's
   clock (``schedstat``: event loop and other threads), latency from separate runs
   (``bench._load.measured_wrk``; bench/bench_server.py's ``read_path`` says why). The
   headline cost is ``1 - CPU(off)/CPU(on)`` per round, median over rounds: the throughput
   a saturated core loses. Each run's ``server_busy`` (CPU / wall) says whether the server
   was saturated; on a shared host it often is not (other tenants starve ``wrk``), and
   the req/s ratio, also reported, then swings widely.
2. The observer alone, single-threaded: µs per ``request(record)`` on the request path,
   and the writer thread's µs per line, which with one core is paid by the same core.
"""

from __future__ import annotations

import importlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import write_results
from bench._load import (
    free_port,
    measured_wrk,
    pin,
    stop_process,
    wait_http,
)
from imds_server._observe import AccessRecord, NullObserver

TARGET = "/metadata/instance?api-version=2021-02-01"
CONNECTIONS = 32
SECONDS = 2
ROUNDS = 8
LATENCY_ROUNDS = 3
LATENCY_SECONDS = 2
#: variant → the server's ``[telemetry]`` table.
VARIANTS: dict[str, dict[str, Any]] = {
    "off": {"metrics": False, "access_log": False},
    "metrics": {"access_log": False},
    "on": {},
}


def _toml(telemetry: dict[str, Any]) -> str:
    lines = ["[telemetry]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in telemetry.items()]
    return "\n".join(lines) + "\n"


class _Server:
    def __init__(self, name: str, telemetry: dict[str, Any], workdir: Path) -> None:
        self.name = name
        self.port, self.admin = free_port(), free_port()
        self.log_dir = workdir / f"logs-{name}"
        config = workdir / f"{name}.toml"
        config.write_text(_toml({"log_dir": str(self.log_dir), **telemetry}))
        self.proc = subprocess.Popen(
            [*pin(0), sys.executable, "-m", "imds_server", "serve", "--demo",
             "--rate-limit", "0", "--listen", f"127.0.0.1:{self.port}",
             "--admin-listen", f"127.0.0.1:{self.admin}", "--config", str(config)],
            stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{self.admin}/healthz")

    def stop(self) -> None:
        # Before stopping: what the pipeline says it did with its lines (a stopped server
        # has no /metrics; the few lines written after this scrape are on disk anyway).
        self.accounted = self._accounting()
        stop_process(self.proc)

    def _accounting(self) -> dict[str, float]:
        import urllib.request

        names = {"imds_telemetry_log_lines_total": "accepted",
                 "imds_telemetry_log_lines_expired_total": "expired",
                 "imds_telemetry_log_lines_dropped_total": "dropped"}
        out = dict.fromkeys(names.values(), 0.0)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics",
                                        timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return out
        for line in text.splitlines():
            name = line.partition("{")[0].partition(" ")[0]
            if name in names:
                out[names[name]] += float(line.rsplit(" ", 1)[1])
        return out

    def logged_lines(self) -> int:
        total = 0
        for path in self.log_dir.glob("imds.log*"):
            if path.suffix == ".gz":
                import gzip

                with gzip.open(path, "rb") as f:
                    total += sum(1 for _ in f)
            else:
                with open(path, "rb") as f:
                    total += sum(1 for _ in f)
        return total


def _wrk(server: _Server, seconds: float = SECONDS, latency: bool = False
         ) -> dict[str, float]:
    """One run: CPU from ``wrk``'s plain path, latency (a Lua hook) from separate runs, as
    bench/bench_server.py measures (its ``read_path`` says why)."""
    result = measured_wrk(f"http://127.0.0.1:{server.port}{TARGET}", server.proc.pid,
                          seconds=seconds, connections=CONNECTIONS, latency=latency)
    if result["non_2xx"]:
        raise RuntimeError(f"{server.name}: {result['non_2xx']:.0f} non-2xx answers")
    result["threads_cpu_us_per_request"] = (result["cpu_us_per_request"]
                                            - result["loop_us_per_request"])
    result["loop_cpu_us_per_request"] = result["loop_us_per_request"]
    return result


def read_path(workdir: Path) -> dict[str, Any]:
    servers = {name: _Server(name, table, workdir) for name, table in VARIANTS.items()}
    names = list(servers)
    try:
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        lat: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        warm_up = {name: _wrk(server, 1)["requests"]  # caches filled, log file opened
                   for name, server in servers.items()}
        for n in range(ROUNDS):  # alternating, the order rotated each round
            for name in names[n % len(names):] + names[:n % len(names)]:
                runs[name].append(_wrk(servers[name]))
        for n in range(LATENCY_ROUNDS):
            for name in names[n % len(names):] + names[:n % len(names)]:
                lat[name].append(_wrk(servers[name], LATENCY_SECONDS, latency=True))
    finally:
        for server in servers.values():
            server.stop()
    logged = servers["on"].logged_lines()  # a stopped server has drained its log queue
    accounted = servers["on"].accounted
    out: dict[str, Any] = {"rounds": ROUNDS, "seconds": SECONDS, "connections": CONNECTIONS,
                           "latency_rounds": LATENCY_ROUNDS}
    for name, results in runs.items():
        out[name] = {
            "rps_median": statistics.median(r["rps"] for r in results),
            "rps_runs": [round(r["rps"]) for r in results],
            "server_busy_runs": [round(r["server_busy"], 2) for r in results],
            **{f"{k}_median": statistics.median(r[k] for r in results) for k in (
                "cpu_us_per_request", "loop_cpu_us_per_request",
                "threads_cpu_us_per_request", "server_busy", "others_core1")},
            **{f"{k}_median": statistics.median(r[k] for r in lat[name]) for k in (
                "p50_ms", "p99_ms", "p999_ms", "max_ms")},
        }
    off, on, met = out["off"], out["on"], out["metrics"]
    out["overhead_on"] = 1 - on["rps_median"] / off["rps_median"]
    out["overhead_metrics"] = 1 - met["rps_median"] / off["rps_median"]
    out["overhead_on_per_round"] = [
        round(1 - b["rps"] / a["rps"], 4) for a, b in zip(runs["off"], runs["on"], strict=True)]
    # Throughput of a saturated core is 1 / CPU per request: this is the throughput cost
    # with the other tenants' noise (which moves req/s far more than CPU/request) taken out.
    out["cpu_overhead_on_per_round"] = [
        round(1 - a["cpu_us_per_request"] / b["cpu_us_per_request"], 4)
        for a, b in zip(runs["off"], runs["on"], strict=True)]
    out["cpu_overhead_on"] = statistics.median(out["cpu_overhead_on_per_round"])
    out["cpu_overhead_metrics"] = statistics.median(
        1 - a["cpu_us_per_request"] / b["cpu_us_per_request"]
        for a, b in zip(runs["off"], runs["metrics"], strict=True))
    # Other tenants only add CPU per request: each variant's least disturbed round.
    best = {name: min(r["cpu_us_per_request"] for r in results)
            for name, results in runs.items()}
    out["cpu_best"] = best
    out["cpu_overhead_on_best"] = 1 - best["off"] / best["on"]
    out["cpu_overhead_metrics_best"] = 1 - best["off"] / best["metrics"]
    out["access_lines_written"] = logged
    out["lines_on_disk"] = logged
    out["lines_expired"] = accounted["expired"]
    out["lines_dropped"] = accounted["dropped"]
    out["lines_accepted"] = accounted["accepted"]
    out["requests_answered_on"] = warm_up["on"] + sum(r["requests"] for r in runs["on"])
    return out


def _record(n: int = 0) -> AccessRecord:
    return AccessRecord(time=time.time(), request_id=f"1a2b-3c4d-{n:x}", caller="10.1.2.3",
                        vm="02aab8a4-74ef-476e-8182-f6d2ba4166a6", method="GET",
                        route="/metadata/instance", path="/metadata/instance",
                        api_version="2021-02-01", status=200, bytes=1827,
                        seconds=0.00031 + n * 1e-9)


def _best(fn: Callable[[], object], per: int, repeat: int = 30) -> float:
    """µs per item, best of ``repeat`` (the least disturbed by other tenants)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best / per * 1e6


def observer_cost(log_dir: Path, n: int = 2000) -> dict[str, float]:
    """Single-threaded µs: the observer on the request path, and the writer per line."""
    from isal import isal_zlib

    from imds_server.telemetry import Telemetry, TelemetryConfig
    from imds_server.telemetry._cold import GZIP_LEVEL
    from imds_server.telemetry._jsonlog import ACCESS_LOGGER, AccessRenderer, access_line, iso_time
    from imds_server.telemetry._jsonlog import queued as _queued

    records = [_record(i) for i in range(n)]
    telemetry = Telemetry(TelemetryConfig.from_mapping({}, cluster="b", machine="b"),
                          log_dir=log_dir)
    pipeline = telemetry.pipeline  # not started: the writer's work is timed by hand below
    log_dir.mkdir(parents=True, exist_ok=True)
    observer, null = telemetry.observer, NullObserver()

    def on_loop() -> None:
        for r in records:
            observer.request(r)
        pipeline.queue.clear()

    def null_loop() -> None:
        for r in records:
            null.request(r)

    from imds_server._request import Response

    response = Response(200, b"x" * 1827, route="/metadata/instance",
                        vm="02aab8a4-74ef-476e-8182-f6d2ba4166a6", api_version="2021-02-01")
    answered = observer.answered  # type: ignore[attr-defined]

    def answered_loop() -> None:  # the server's path: no AccessRecord (see _observe.py)
        for i, r in enumerate(records):
            answered(r.time, "1a2b-3c4d-", i, r.caller, r.method, r.path, response, r.bytes,
                     r.seconds)
        pipeline.queue.clear()

    text = "".join(access_line(r) for r in records).encode()
    queued = [_queued(r) for r in records]

    def writer() -> None:
        pipeline.queue.extend(queued)
        pipeline._drain()  # render, join, one write per batch (plus rotation when due)

    out = {
        "null_observer_us": _best(null_loop, n),
        "observer_on_loop_us": _best(on_loop, n),
        "answered_on_loop_us": _best(answered_loop, n),
        "writer_us_per_line": _best(writer, n),
        "render_template_us": _best(lambda: [access_line(r) for r in records], n),
        "render_batch_us": _best(lambda: AccessRenderer().render(queued), n),
        # paid at rotation, by the writer thread (the best run above has no rotation)
        "gzip_us_per_line": _best(lambda: isal_zlib.compress(text, GZIP_LEVEL), n, 10),
        "zlib3_us_per_line": _best(lambda: zlib.compress(text, 3), n, 10),  # before s3
    }
    pipeline.stop()
    try:
        orjson: Any = importlib.import_module("orjson")
    except ImportError:
        return out

    def with_orjson(x: AccessRecord) -> str:
        return str(orjson.dumps({
            "time": iso_time(x.time), "level": "info", "logger": ACCESS_LOGGER,
            "message": f"{x.method} {x.path} {x.status}", "request_id": x.request_id,
            "vm": x.vm, "caller": x.caller, "method": x.method, "route": x.route,
            "path": x.path, "api_version": x.api_version, "status": x.status,
            "bytes": x.bytes, "seconds": round(x.seconds, 7), "refused": x.refused,
            "watch": x.watch}).decode()) + "\n"

    out["render_orjson_us"] = _best(lambda: [with_orjson(r) for r in records], n)
    out["orjson_version"] = orjson.__version__
    return out


def main() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk (or scripts/install-tools)")
    with tempfile.TemporaryDirectory() as tmp:
        rp = read_path(Path(tmp))
        micro = observer_cost(Path(tmp) / "micro")
    figures = {"read_path": rp, "observer": micro}
    rows = [
        *[[f"read path, {name}: req/s (median of {ROUNDS})", rp[name]["rps_median"],
           " ".join(str(x) for x in rp[name]["rps_runs"])] for name in VARIANTS],
        *[[f"read path, {name}: server CPU µs/request (loop + other threads)",
           rp[name]["cpu_us_per_request_median"],
           f"{rp[name]['loop_cpu_us_per_request_median']:.1f} + "
           f"{rp[name]['threads_cpu_us_per_request_median']:.1f}"] for name in VARIANTS],
        ["**cost of telemetry (metrics + access log), CPU-based (goal <= 10%)**",
         f"**{rp['cpu_overhead_on']:.1%}**",
         "per round: " + " ".join(f"{x:.1%}" for x in rp["cpu_overhead_on_per_round"])],
        ["cost of telemetry / of metrics only, least disturbed round of each variant",
         f"{rp['cpu_overhead_on_best']:.1%}", f"{rp['cpu_overhead_metrics_best']:.1%}"],
        ["cost of telemetry, req/s-based (noisy on a shared host)", f"{rp['overhead_on']:.1%}",
         "per round: " + " ".join(f"{x:.1%}" for x in rp["overhead_on_per_round"])],
        ["cost of metrics only, CPU-based / req/s-based", f"{rp['cpu_overhead_metrics']:.1%}",
         f"{rp['overhead_metrics']:.1%}"],
        ["lines on disk + deleted by retention / requests answered (on)",
         rp["lines_on_disk"] + rp["lines_expired"], rp["requests_answered_on"]],
        ["lines on disk / deleted by retention / dropped (on)", rp["lines_on_disk"],
         f"{rp['lines_expired']:.0f} / {rp['lines_dropped']:.0f}"],
        *[[f"p99 ms, {name} (p99.9 / max)", rp[name]["p99_ms_median"],
           f"{rp[name]['p999_ms_median']:.2f} / {rp[name]['max_ms_median']:.2f}"]
          for name in VARIANTS],
        ["observer on the event loop, µs/request: answered (the server's path; line "
         "rendered)", micro["answered_on_loop_us"],
         f"request(AccessRecord) {micro['observer_on_loop_us']:.2f}, "
         f"NullObserver {micro['null_observer_us']:.2f}"],
        ["log writer thread, µs/line (render + join + write)", micro["writer_us_per_line"],
         f"+ gzip at rotation {micro['gzip_us_per_line']:.2f} (ISA-L; zlib level 3 "
         f"{micro['zlib3_us_per_line']:.2f})"],
        ["render one access line: writer's batch renderer", micro["render_batch_us"], ""],
        ["render one access line: template (render_access)", micro["render_template_us"],
         f"orjson {micro['orjson_version']}: {micro['render_orjson_us']:.2f}"
         if "render_orjson_us" in micro else "orjson not installed"],
    ]
    md = write_results("telemetry", figures, ["measure", "value", "detail"], rows)
    print(md.read_text())

if __name__ == "__main__":
    main()
