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
2. Slices (the headline CPU figures): one server, one continuous ``wrk``, the server's
   observer switched between ``off``, ``metrics`` and ``on`` every ``SLICE_SECONDS`` by a
   task inside the server (``serve_slices``: exactly the attributes ``Server.__init__``
   sets for each configuration), its CPU per slice from its own schedstat clock and
   requests from its own count. Why: separate processes and separate ``wrk`` runs seconds
   apart met different neighbours on this shared machine, and the rounds disagreed by
   tens of percent (-10%..31%); slices a second apart meet the same ones. Each cycle
   (one slice of each mode, the order rotated per cycle) gives one share; the median and
   quartiles over cycles are reported, and the pooled share (all CPU / all requests of
   each mode). A short unmeasured guard after each switch lets the writer finish the
   previous slice's lines, so they are not billed to the next mode.
   ``off#2``/``metrics#2``/``on#2`` repeat a mode for an A/A check of the noise.
3. The observer alone, single-threaded: µs per ``request(record)`` on the request path,
   and the writer thread's µs per line, which with one core is paid by the same core.

Lines against requests (is any line lost?): the ``on`` server's own count of answered
requests (``imds_http_requests_total``, scraped once the load is over, just before it
stops: the same window as its lines, warm-up and latency runs included) against its
access lines on disk after it stopped, plus those deleted by retention or dropped.
"""

from __future__ import annotations

import importlib
import json
import os
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
#: The slices part: seconds of each slice, of the unmeasured guard after each switch, of
#: the one ``wrk`` run (the first ``SLICES_WARMUP`` of it not measured).
SLICE_SECONDS = 0.5
SLICE_GUARD = 0.1
SLICES_SECONDS = 40
SLICES_WARMUP = 2.0
SLICE_MODES = ("off", "metrics", "on")
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
                 "imds_telemetry_log_lines_dropped_total": "dropped",
                 "imds_http_requests_total": "answered"}
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

    def logged_lines(self) -> tuple[int, int]:
        """(lines on disk, access lines among them)."""
        import gzip

        total = access = 0
        marker = b'"logger":"imds_server.access"'
        for path in self.log_dir.glob("imds.log*"):
            with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
                for line in f:
                    total += 1
                    access += marker in line
        return total, access


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
    logged, access_logged = servers["on"].logged_lines()  # stopped: its queue drained
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
    out["access_lines_written"] = access_logged
    out["lines_on_disk"] = logged
    out["access_lines_on_disk"] = access_logged
    out["lines_expired"] = accounted["expired"]
    out["lines_dropped"] = accounted["dropped"]
    out["lines_accepted"] = accounted["accepted"]
    # The server's own count, over its whole life like its lines (the old figure, wrk's
    # count of the plain runs, left out the latency runs: 834,328 lines "for" 626,672).
    out["requests_answered_on"] = accounted["answered"]
    out["requests_wrk_on"] = warm_up["on"] + sum(
        r["requests"] for r in runs["on"] + lat["on"])
    out["access_lines_missing"] = (accounted["answered"] - access_logged
                                   - accounted["expired"] - accounted["dropped"])
    return out


def serve_slices(config_path: str, port: int, admin: int, out_path: str,
                 slice_seconds: float, guard: float, modes: tuple[str, ...]) -> None:
    """``imds-server serve --demo`` as the CLI runs it, telemetry on, whose observer a task
    switches between ``modes`` (off, metrics, on) every ``slice_seconds`` (plus ``guard``
    unmeasured after each switch), the order rotated each cycle; on exit, each slice's
    (mode, wall start and end, event-loop and all-threads CPU ns, requests) as JSON."""
    import trio

    from bench._load import task_cpu_ns
    from imds_server import Server
    from imds_server._cli import _telemetry_for, serve_until_signalled
    from imds_server._config import load_config
    from imds_server.telemetry import TelemetryObserver

    config = load_config(config_path, {"listen": f"127.0.0.1:{port}",
                                       "admin-listen": f"127.0.0.1:{admin}", "demo": True,
                                       "rate-limit": 0})
    tel = _telemetry_for(config)
    arguments: dict[str, Any] = tel.server_arguments(config)
    server = Server(config, **arguments)
    observers: dict[str, Any] = {"off": NullObserver(), "on": arguments["observer"],
                                 "metrics": TelemetryObserver(tel.metrics, None)}
    if "baseline" in modes:  # another version's observer, same pipeline: an A/B in one run
        observers["baseline"] = _baseline_observer(os.environ[BASELINE_ENV])(
            tel.metrics, tel.pipeline)

    from imds_server.telemetry import _observer

    batches = {mode: int(mode[3:]) if mode.startswith("on:") else _observer.RENDER_BATCH
               for mode in modes}
    for mode in modes:
        if mode.startswith("on:"):  # another batch size (RENDER_BATCH)
            observers[mode] = TelemetryObserver(tel.metrics, tel.pipeline)

    for mode in modes:  # "off#2", "metrics#2", "on#2": the same again, for an A/A check
        base = mode.partition("#")[0]
        if mode != base:
            observers[mode] = (NullObserver() if base == "off" else TelemetryObserver(
                tel.metrics, tel.pipeline if base == "on" else None))
            batches[mode] = _observer.RENDER_BATCH

    def use(mode: str) -> None:  # what Server.__init__ sets for an observer
        observer = observers[mode]
        _observer.RENDER_BATCH = batches[mode]
        server.observer = observer
        server._count_only = getattr(observer, "count", None)
        server._answered = getattr(observer, "answered", None)
        server._silent = type(observer) is NullObserver

    slices: list[dict[str, Any]] = []
    pid = os.getpid()

    async def slicer() -> None:
        cycle = 0
        while True:
            shift = cycle % len(modes)
            for mode in modes[shift:] + modes[:shift]:
                use(mode)
                await trio.sleep(guard)
                loop0, cpu0 = task_cpu_ns(pid)
                n0, t0 = server.api.stats.requests, time.time()
                await trio.sleep(slice_seconds)
                loop1, cpu1 = task_cpu_ns(pid)
                n1, t1 = server.api.stats.requests, time.time()
                slices.append({"mode": mode, "cycle": cycle, "start": t0, "end": t1,
                               "loop_ns": loop1 - loop0, "cpu_ns": cpu1 - cpu0,
                               "requests": n1 - n0})
            cycle += 1

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(slicer)
            await serve_until_signalled(server, tel)
            nursery.cancel_scope.cancel()

    trio.run(main)
    Path(out_path).write_text(json.dumps(slices))


#: Mode ``baseline`` of ``--slices``: the path of another version's ``_observer.py`` (e.g.
#: ``git show main:src/imds_server/telemetry/_observer.py``), loaded beside this one.
BASELINE_ENV = "BENCH_BASELINE_OBSERVER"


def _baseline_observer(path: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("imds_server.telemetry._baseline", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TelemetryObserver


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return (values[0],) * 3 if values else (float("nan"),) * 3
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return q1, q2, q3


def sliced(workdir: Path, modes: tuple[str, ...] = SLICE_MODES,
           seconds: float = SLICES_SECONDS) -> dict[str, Any]:
    """Part 2 (module docstring): the telemetry and metrics shares from slices of one run."""
    config = workdir / "slices.toml"
    config.write_text(_toml({"log_dir": str(workdir / "logs-slices")}))
    port, admin, out = free_port(), free_port(), workdir / "slices.json"
    proc = subprocess.Popen(
        [*pin(0), sys.executable, "-m", "bench.bench_telemetry", "--serve-slices",
         str(config), str(port), str(admin), str(out), str(SLICE_SECONDS), str(SLICE_GUARD),
         ",".join(modes)], stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{admin}/healthz")
        started = time.time()
        run = measured_wrk(f"http://127.0.0.1:{port}{TARGET}", proc.pid, seconds=seconds,
                           connections=CONNECTIONS)
        ended = time.time()
    finally:
        stop_process(proc)
    if run["non_2xx"]:
        raise RuntimeError(f"slices: {run['non_2xx']:.0f} non-2xx answers")
    kept = [x for x in json.loads(out.read_text())
            if x["start"] >= started + SLICES_WARMUP and x["end"] <= ended and x["requests"]]
    by_cycle: dict[int, dict[str, dict[str, Any]]] = {}
    for x in kept:
        by_cycle.setdefault(x["cycle"], {})[x["mode"]] = x
    cycles = [c for c in by_cycle.values() if len(c) == len(modes)]

    def per_request(x: dict[str, Any], key: str = "cpu_ns") -> float:
        return float(x[key]) / float(x["requests"]) / 1e3

    result: dict[str, Any] = {"slice_seconds": SLICE_SECONDS, "guard_seconds": SLICE_GUARD,
                              "wrk_seconds": seconds, "cycles": len(cycles),
                              "server_busy": run["server_busy"],
                              "others_core0": run["others_core0"]}
    for mode in modes:
        mine = [x for x in kept if x["mode"] == mode]
        result[mode] = {
            "slices": len(mine),
            "cpu_us_per_request": _quartiles([per_request(x) for x in mine]),
            "loop_us_per_request": _quartiles([per_request(x, "loop_ns") for x in mine]),
            "pooled_cpu_us_per_request": sum(x["cpu_ns"] for x in mine)
            / max(1, sum(x["requests"] for x in mine)) / 1e3,
            "busy": _quartiles([x["cpu_ns"] / 1e9 / (x["end"] - x["start"]) for x in mine]),
        }
    for other in modes:
        if other in ("off", "metrics", "on") or "on" not in modes or other.startswith("off"):
            continue
        result[f"on_vs_{other}_per_cycle"] = [
            round(1 - per_request(c["on"]) / per_request(c[other]), 4) for c in cycles]
        result[f"on_vs_{other}"] = _quartiles(result[f"on_vs_{other}_per_cycle"])
    for mode in modes:
        if mode == "off":
            continue
        shares = [1 - per_request(c["off"]) / per_request(c[mode]) for c in cycles]
        result[f"share_{mode}_per_cycle"] = [round(x, 4) for x in shares]
        result[f"share_{mode}"] = _quartiles(shares)
        result[f"share_{mode}_pooled"] = 1 - (result["off"]["pooled_cpu_us_per_request"]
                                              / result[mode]["pooled_cpu_us_per_request"])
    return result


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
        sl = sliced(Path(tmp))
        micro = observer_cost(Path(tmp) / "micro")
    figures = {"read_path": rp, "slices": sl, "observer": micro}

    def q(x: tuple[float, float, float], fmt: str = ".1%") -> str:
        return f"{x[1]:{fmt}} ({x[0]:{fmt}} to {x[2]:{fmt}})"

    rows = [
        [f"**slices: cost of telemetry (metrics + access log), median of {sl['cycles']} "
         f"cycles (quartiles); goal <= 10%**", f"**{sl['share_on'][1]:.1%}**",
         f"{q(sl['share_on'])}; pooled {sl['share_on_pooled']:.1%}"],
        ["**slices: cost of metrics only (goal <= 5%)**", f"**{sl['share_metrics'][1]:.1%}**",
         f"{q(sl['share_metrics'])}; pooled {sl['share_metrics_pooled']:.1%}"],
        *[[f"slices, {mode}: server CPU µs/request, median (quartiles) of "
           f"{sl[mode]['slices']} slices", round(sl[mode]["cpu_us_per_request"][1], 2),
           f"{q(sl[mode]['cpu_us_per_request'], '.2f')}; loop "
           f"{sl[mode]['loop_us_per_request'][1]:.2f}; busy {sl[mode]['busy'][1]:.2f}"]
          for mode in SLICE_MODES],
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
        ["requests answered (on: the server's own count, its whole life) / access lines "
         "on disk + deleted by retention + dropped", f"{rp['requests_answered_on']:.0f}",
         f"{rp['access_lines_on_disk'] + rp['lines_expired'] + rp['lines_dropped']:.0f}"],
        ["access lines missing (answered - on disk - expired - dropped); wrk's count",
         f"{rp['access_lines_missing']:.0f}", f"{rp['requests_wrk_on']:.0f}"],
        ["lines on disk (all / access) / deleted by retention / dropped (on)",
         f"{rp['lines_on_disk']} / {rp['access_lines_on_disk']}",
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
    if sys.argv[1:2] == ["--serve-slices"]:
        serve_slices(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5],
                     float(sys.argv[6]), float(sys.argv[7]), tuple(sys.argv[8].split(",")))
    elif sys.argv[1:2] == ["--slices"]:  # --slices [SECONDS [MODES]]: printed, not written
        with tempfile.TemporaryDirectory() as tmp:
            found = sliced(Path(tmp), seconds=float(sys.argv[2]) if sys.argv[2:] else
                           SLICES_SECONDS, modes=tuple(sys.argv[3].split(",")) if
                           sys.argv[3:] else SLICE_MODES)
        print(json.dumps(found, indent=1))
    else:
        main()
