"""imds-server benchmarks (loopback only): read path vs a bare server, parked watchers, RSS.

1. Read path: server CPU µs per request and p50/p99/p99.9/max at 32 connections for
   ``/metadata/instance?api-version=2021-02-01`` (``--rate-limit 0``), against a bare
   trio + httptools server answering the identical bytes. Both pinned to core 0, ``wrk``
   pinned to core 1, runs alternating (method: ``read_path``). Goals: CPU ratio <= 1.25,
   telemetry <= 10% of the CPU (metrics <= 5%), p99 ratio <= 2.
2. 10,000 parked watchers: server memory per watcher (goal <= 30 KiB) and time from a
   change (admin POST) to the last watcher answered (goal < 1 s), on a quiet machine and
   with a CPU hog on the server's core.
3. RSS with 1,000 VMs in the view (and after one read per VM fills the answer cache).
"""

from __future__ import annotations

import gc
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from ._common import write_results
from ._load import (
    free_port,
    machine_speed,
    measured_wrk,
    pin,
    stop_process,
    wait_http,
    wait_tcp,
    wrk,
)

TARGET = "/metadata/instance?api-version=2021-02-01"
#: CPU runs per variant (short, alternating: see ``read_path``), and their length.
CPU_ROUNDS = 8
SECONDS = 2
#: Latency runs per variant, and their length.
LATENCY_ROUNDS = 5
LATENCY_SECONDS = 2
#: A run whose server was on CPU at least this share of the wall time was saturated.
SATURATED = 0.9
WATCHERS = 10_000
VMS = 1_000


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _start_server(extra: list[str], config: dict[str, Any] | None = None,
                  ) -> tuple[subprocess.Popen[bytes], int, int]:
    port, admin = free_port(), free_port()
    args = [*pin(0), sys.executable, "-m", "imds_server", "serve",
            "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}", *extra]
    if config:
        path = Path(tempfile.mkstemp(suffix=".toml")[1])
        path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))
        args += ["--config", str(path)]
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{admin}/healthz")
    return proc, port, admin


def _raw_answer(port: int) -> bytes:
    """The server's exact response bytes for TARGET (what the bare server will send)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"GET {TARGET} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


#: The variants of the read path, each a real ``imds-server serve`` with a data directory
#: (logs in ``<data-dir>.logs``, rotated and gzipped, as a host runs it), but ``bare``.
#: ``imds`` is the default configuration (telemetry on: metrics and one access line per
#: request); ``imds_metrics`` has no access lines; ``imds_no_telemetry`` is the server
#: without telemetry at all (``--serve-no-telemetry``), to tell its own cost from
#: telemetry's.
VARIANTS = ("imds", "bare", "imds_metrics", "imds_no_telemetry")


def _rounds(ports: dict[str, int], pids: dict[str, int], rounds: int, seconds: float,
            latency: bool) -> tuple[dict[str, list[dict[str, float]]], list[float]]:
    """``rounds`` rounds of one run per variant, the order rotated each round (so that no
    variant always follows the same one), and the load average at each round."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    load: list[float] = []
    for n in range(rounds):
        load.append(os.getloadavg()[0])
        for name in VARIANTS[n % len(VARIANTS):] + VARIANTS[:n % len(VARIANTS)]:
            runs[name].append(measured_wrk(f"http://127.0.0.1:{ports[name]}{TARGET}",
                                           pids[name], seconds=seconds, latency=latency))
    return runs, load


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def read_path() -> dict[str, Any]:
    """imds (``imds-server serve``, telemetry included) against the bare server answering
    the identical bytes, and the same server with metrics only and without telemetry.

    Method (changed in session 3; bench/results/server.md shows what each run saw). CPU
    per request is only the cost of a request while the server is saturated: a server
    that waits for its load generator pays a wake-up (epoll, scheduler, a receive that
    finds one request) per request or two, which more than doubled the bare server's
    figure when other tenants starved ``wrk`` on its core. So:

    * CPU runs use ``wrk``'s plain path (no Lua), ``CPU_ROUNDS`` short runs per variant,
      alternating with the order rotated each round; CPU is the scheduler's own clock
      (``schedstat``, all threads). Each run records whether the server was saturated
      (``server_busy``: CPU / wall time), how busy ``wrk`` was, and how much CPU other
      processes took on either core meanwhile. The ratios are per round (a round's runs
      are seconds apart) and reported as median, quartiles and range, over all rounds
      and over the rounds in which every variant was saturated (``SATURATED``).
    * Latency (p50/p99/p99.9/max, from a Lua ``done()`` hook) comes from separate runs,
      ``LATENCY_ROUNDS`` of them, alternating the same way.
    * ``machine_speed`` (a fixed pure-Python loop on the server's core) before and after
      says how fast the machine was: absolute µs per request follow it; ratios do not.

    Both servers answer the same bytes with the same pinning (servers core 0, ``wrk``
    core 1). ``perf stat`` instruction counts would be steadier still, but this machine
    (a Firecracker guest) exposes no hardware counters (``perf stat -e instructions``:
    not supported)."""
    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, int] = {}
    try:
        for name, telemetry in (("imds", ""), ("imds_metrics", "access_log = false\n")):
            config = work / f"{name}.toml"
            config.write_text(f"[telemetry]\n{telemetry}")
            procs[name], ports[name], _ = _start_server(
                ["--demo", "--rate-limit", "0", "--data-dir", str(work / name),
                 "--config", str(config)])
        plain_port, plain_admin = free_port(), free_port()
        plain_config = work / "plain.toml"
        plain_config.write_text(f"rate-limit = 0\ndata-dir = {json.dumps(str(work / 'plain'))}\n")
        procs["imds_no_telemetry"] = subprocess.Popen(
            [*pin(0), sys.executable, "-m", "bench.bench_server", "--serve-no-telemetry",
             str(plain_config), str(plain_port), str(plain_admin)], stderr=subprocess.DEVNULL)
        ports["imds_no_telemetry"] = plain_port
        answer = _raw_answer(ports["imds"])
        bare_port = free_port()
        answer_file = work / "answer"
        answer_file.write_bytes(answer)
        procs["bare"] = subprocess.Popen([*pin(0), sys.executable, "-m", "bench.bench_server",
                                          "--bare", str(bare_port), str(answer_file)])
        ports["bare"] = bare_port
        wait_tcp(bare_port)
        wait_http(f"http://127.0.0.1:{plain_admin}/healthz")
        for name in VARIANTS:  # warm-up: caches filled, log files opened
            wrk(f"http://127.0.0.1:{ports[name]}{TARGET}", seconds=1)
        pids = {name: proc.pid for name, proc in procs.items()}
        speed = [machine_speed(0)]
        runs, load = _rounds(ports, pids, CPU_ROUNDS, SECONDS, latency=False)
        latency, latency_load = _rounds(ports, pids, LATENCY_ROUNDS, LATENCY_SECONDS,
                                        latency=True)
        speed.append(machine_speed(0))
    finally:
        for proc in procs.values():
            stop_process(proc)
        shutil.rmtree(work, ignore_errors=True)
    return _summary(runs, latency, load + latency_load, speed, len(answer))


def _summary(runs: dict[str, list[dict[str, float]]],
             latency: dict[str, list[dict[str, float]]], load: list[float],
             speed: list[float], answer_bytes: int) -> dict[str, Any]:
    out: dict[str, Any] = {"answer_bytes": answer_bytes, "rounds": CPU_ROUNDS,
                           "seconds": SECONDS, "latency_rounds": LATENCY_ROUNDS,
                           "latency_seconds": LATENCY_SECONDS, "load_average_1m": load,
                           "machine_speed_ns": speed, "saturated_at": SATURATED}
    for name in VARIANTS:
        cpu = {k: statistics.median(r[k] for r in runs[name]) for k in runs[name][0]}
        lat = {k: statistics.median(r[k] for r in latency[name])
               for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms")}
        out[name] = {**cpu, **lat, "runs": runs[name], "latency_runs": latency[name]}
    rounds = range(CPU_ROUNDS)
    saturated = [n for n in rounds
                 if all(runs[v][n]["server_busy"] >= SATURATED for v in VARIANTS)]
    out["saturated_rounds"] = saturated

    def per_round(a: str, b: str, share: bool = False) -> list[float]:
        ratios = [runs[a][n]["cpu_us_per_request"] / runs[b][n]["cpu_us_per_request"]
                  for n in rounds]
        return [1 - 1 / r for r in ratios] if share else ratios

    def summarise(key: str, values: list[float]) -> None:
        out[f"{key}_per_round"] = values
        out[f"{key}_quartiles"] = _quartiles(values)
        out[key] = statistics.median(values)
        chosen = [values[n] for n in saturated]
        out[f"{key}_saturated"] = statistics.median(chosen) if chosen else None

    summarise("cpu_ratio", per_round("imds", "bare"))
    summarise("cpu_ratio_metrics", per_round("imds_metrics", "bare"))
    summarise("cpu_ratio_no_telemetry", per_round("imds_no_telemetry", "bare"))
    # Telemetry's share of the default server's CPU: 1 - CPU(without)/CPU(with), per round.
    summarise("telemetry_share", per_round("imds", "imds_no_telemetry", share=True))
    summarise("metrics_share", per_round("imds_metrics", "imds_no_telemetry", share=True))
    out["cpu_ratios_per_round"] = out["cpu_ratio_per_round"]
    bare = latency["bare"]
    for key in ("p50_ms", "p99_ms", "p999_ms", "max_ms"):
        per = [i[key] / b[key] for i, b in zip(latency["imds"], bare, strict=True)]
        out[f"{key}_ratios"] = per
        out[f"{key}_ratio"] = statistics.median(per)
    out["p99_ratio"] = out["p99_ms_ratio"]
    out["others_core0"] = statistics.median(
        r["others_core0"] for v in VARIANTS for r in runs[v])
    out["others_core1"] = statistics.median(
        r["others_core1"] for v in VARIANTS for r in runs[v])
    return out


WATCH_CLIENTS = 4  # client processes: one process reading 10,000 answers was the bottleneck
WATCH_TARGET = ("/metadata/instance/compute/name?api-version=2021-02-01&format=text"
                "&wait_for_change=true&timeout_sec=600")


#: A CPU hog: the busy-machine variant of ``watchers`` runs one on the server's core.
_HOG = "while True:\n    pass\n"


def watchers(busy: bool = False) -> dict[str, Any]:
    """10,000 parked watchers: memory per watcher and time from a change to the last answer.

    ``busy``: with a CPU hog (a Python busy loop, same priority) pinned to the server's core
    for the whole run, so that the server gets about half of it.

    Measured from both sides, so that the figure is the server's: the clients are several
    processes on the other core, each a plain epoll loop (cheaper per answer than the
    server's own work), reporting when they read their last answer; and the server (this
    module's ``--serve-watch``: the real ``Server`` and serving loop, with an observer) reports
    when it wrote its last answer. Both are wall-clock times on this one machine."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    count = min(WATCHERS, hard - 200)
    config = {"rate-limit": 0, "max-watchers-per-vm": count + 10,
              "max-connections": count + 100, "max-connections-per-caller": count + 100,
              "max-watch-timeout": 600, "idle-timeout": 600, "header-timeout": 60}
    port, admin = free_port(), free_port()
    path = Path(tempfile.mkstemp(suffix=".toml")[1])
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))
    proc = subprocess.Popen([*pin(0), sys.executable, "-m", "bench.bench_server",
                             "--serve-watch", str(path), str(port), str(admin)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    hog = subprocess.Popen([*pin(0), sys.executable, "-c", _HOG]) if busy else None
    try:
        wait_http(f"http://127.0.0.1:{admin}/healthz")
        figures = _watch_run(proc.pid, port, admin, count)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
        stop_process(proc)
    assert proc.stdout is not None
    server_side = json.loads(proc.stdout.read() or b"{}")
    sent = figures.pop("change_sent")
    last = server_side.get("last_written")
    figures["server_answered"] = server_side.get("answered")
    figures["change_to_last_written_s"] = last - sent if last else None
    # Full (generation 2) collections inside that window: one over the 10,000 parked
    # connections' objects is often due right when the change comes (deferred from the
    # parking phase), and is part of the figure.
    figures["full_gc_in_window_s"] = sum(
        seconds for start, seconds in server_side.get("full_gc_pauses", [])
        if last and sent <= start <= last)
    return figures


def _watch_run(pid: int, port: int, admin: int, count: int) -> dict[str, Any]:
    rss_before = _rss_kib(pid)
    shares = [count // WATCH_CLIENTS + (i < count % WATCH_CLIENTS)
              for i in range(WATCH_CLIENTS)]
    clients = [subprocess.Popen([*pin(1), sys.executable, "-m", "bench.bench_server",
                                 "--watch-client", str(port), str(n)],
                                stdout=subprocess.PIPE, text=True) for n in shares]
    try:
        for client in clients:  # each prints a line once its watchers are sent
            assert client.stdout is not None
            client.stdout.readline()
        parked = 0
        for _ in range(1200):
            parked = _health(admin)["parked_watchers"]
            if parked >= count:
                break
            time.sleep(0.1)
        rss_after = _rss_kib(pid)
        change = json.dumps({"events": [{
            "source": "fabric", "key": ["vms", "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
                                        "compute", "name"],
            "version": 2, "value": "renamed"}]}).encode()
        sent = time.time()
        _post(admin, change)
        results = []
        for client in clients:
            out, _ = client.communicate(timeout=120)
            results.append(json.loads(out.splitlines()[-1]))
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait()
    answered = sum(r["answered"] for r in results)
    last = max((r["last"] for r in results if r["last"]), default=None)
    return {"watchers": count, "parked_seen": parked, "client_processes": len(clients),
            "rss_before_kib": rss_before, "rss_after_kib": rss_after,
            "kib_per_watcher": (rss_after - rss_before) / count,
            "answered": answered, "change_sent": sent,
            "change_to_last_answer_s": last - sent if last else None}


def watch_client(port: int, count: int) -> None:
    """``count`` parked watchers on plain sockets and one epoll loop; prints a line when
    they are sent, then (once every one is answered or closed) a JSON summary with the
    wall-clock time of the last answer read."""
    import select

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    request = f"GET {WATCH_TARGET} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n".encode()
    poller = select.epoll()
    socks: dict[int, socket.socket] = {}
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(request)
        sock.setblocking(False)
        socks[sock.fileno()] = sock
        poller.register(sock.fileno(), select.EPOLLIN)
    print("sent", flush=True)
    seen = {fd: b"" for fd in socks}
    answered, last = 0, 0.0
    while seen:
        for fd, _ in poller.poll():
            try:
                chunk = socks[fd].recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            seen[fd] += chunk
            if b"renamed" in seen[fd] or not chunk:
                if chunk:
                    answered += 1
                    last = time.time()
                poller.unregister(fd)
                socks.pop(fd).close()
                del seen[fd]
    print(json.dumps({"answered": answered, "last": last or None}), flush=True)


def serve(config_path: str, port: int, admin: int, *, telemetry: bool = True,
          watch: bool = False) -> None:
    """``imds-server serve --demo`` as the CLI runs it (same ``Server``, same signal
    handling, telemetry mounted the same way) with two knobs for measuring: ``watch`` adds
    an observer noting when the last watch answer was written (an access record's
    ``time + seconds``, printed as JSON on exit); ``telemetry=False`` leaves telemetry out,
    to tell the server's own cost from telemetry's."""
    import trio

    from imds_server import AccessRecord, RequestObserver, Server
    from imds_server._cli import _telemetry_for, serve_until_signalled
    from imds_server._config import load_config

    class LastWrite:
        def __init__(self, inner: RequestObserver | None) -> None:
            self.inner = inner
            self.count = 0
            self.last = 0.0

        def request(self, record: AccessRecord) -> None:
            if self.inner is not None:
                self.inner.request(record)
            if record.watch:
                self.count += 1
                self.last = max(self.last, record.time + record.seconds)

        def answered(self, time: float, id_prefix: str, id_number: int, caller: str,
                     method: str, target: str, response: Any, sent: int,
                     seconds: float) -> None:
            # The server's cheap path, as telemetry gets it (see _observe.AnswerObserver).
            inner = getattr(self.inner, "answered", None)
            if inner is not None:
                inner(time, id_prefix, id_number, caller, method, target, response, sent,
                      seconds)
            if response.watch:
                self.count += 1
                self.last = max(self.last, time + seconds)

    pauses: list[tuple[float, float]] = []  # (wall time a collection began, seconds)
    began = [0.0]

    def gc_pause(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[0] = time.time()
        elif info.get("generation") == 2:
            pauses.append((began[0], time.time() - began[0]))

    if watch:  # full collections over 10,000 parked connections are long: report them
        gc.callbacks.append(gc_pause)
    config = load_config(config_path, {"listen": f"127.0.0.1:{port}",
                                       "admin-listen": f"127.0.0.1:{admin}", "demo": True})
    tel = _telemetry_for(config) if telemetry else None
    arguments: dict[str, Any] = tel.server_arguments(config) if tel else {}
    observer = LastWrite(arguments.get("observer"))
    if watch:
        arguments["observer"] = observer
    trio.run(serve_until_signalled, Server(config, **arguments), tel)
    if watch:
        print(json.dumps({"answered": observer.count,
                          "last_written": observer.last or None,
                          "full_gc_pauses": pauses}), flush=True)


def _health(admin: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def _post(admin: int, body: bytes) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{admin}/events", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()


def many_vms() -> dict[str, Any]:
    from imds_server._demo import compute, network

    proc, port, admin = _start_server(["--rate-limit", "0"])
    try:
        empty = _rss_kib(proc.pid)
        for start in range(0, VMS, 100):
            events = []
            for i in range(start, start + 100):
                vm = f"vm-{i:05d}"
                events += [
                    {"source": "fabric", "key": ["vms", vm, "compute"], "version": 1,
                     "value": compute(vm, f"name-{i}", i % 3)},
                    {"source": "fabric", "key": ["vms", vm, "network"], "version": 1,
                     "value": network(i % 200)},
                    {"source": "tags", "key": ["vms", vm, "compute", "tagsList"], "version": 1,
                     "value": [{"name": "n", "value": str(i)}]},
                    {"source": "hostnet", "key": ["callers", f"127.1.{i // 250}.{i % 250 + 1}"],
                     "version": 1, "value": vm}]
            _post(admin, json.dumps({"events": events}).encode())
        loaded = _rss_kib(proc.pid)
        for i in range(VMS):  # one read per VM, from its own address: fills the cache
            with socket.socket() as sock:
                sock.bind((f"127.1.{i // 250}.{i % 250 + 1}", 0))
                sock.connect(("127.0.0.1", port))
                sock.sendall(f"GET {TARGET} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n"
                             "Connection: close\r\n\r\n".encode())
                while sock.recv(65536):
                    pass
        cached = _rss_kib(proc.pid)
    finally:
        stop_process(proc)
    return {"vms": VMS, "rss_empty_kib": empty, "rss_loaded_kib": loaded,
            "rss_after_reads_kib": cached, "kib_per_vm": (loaded - empty) / VMS,
            "kib_per_vm_with_cache": (cached - empty) / VMS}


def main() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk (or scripts/install-tools)")
    figures = {"read_path": read_path(), "watchers": watchers(),
               "watchers_busy": watchers(busy=True), "many_vms": many_vms()}
    rp, w, m = figures["read_path"], figures["watchers"], figures["many_vms"]
    wb = figures["watchers_busy"]

    def spread(values: list[float]) -> str:
        return f"{min(values):.2f}-{max(values):.2f}"

    def dist(key: str, percent: bool = False) -> str:
        """quartiles, range and the saturated rounds' median of a per-round figure."""
        def f(x: float) -> str:
            return f"{x:.1%}" if percent else f"{x:.2f}"

        q1, _, q3 = rp[f"{key}_quartiles"]
        values = rp[f"{key}_per_round"]
        sat = rp[f"{key}_saturated"]
        return (f"quartiles {f(q1)}-{f(q3)}, range {f(min(values))}-{f(max(values))}; "
                f"saturated rounds: {f(sat) if sat is not None else 'none'}")

    saturated = len(rp["saturated_rounds"])
    rows = [
        ["read CPU µs/request (imds, telemetry on)", rp["imds"]["cpu_us_per_request"],
         f"median of {rp['rounds']} runs of {rp['seconds']} s, plain wrk"],
        ["read CPU µs/request (bare trio+httptools)", rp["bare"]["cpu_us_per_request"],
         f"machine speed {rp['machine_speed_ns'][0]:.0f} / "
         f"{rp['machine_speed_ns'][1]:.0f} ns per loop step (before / after)"],
        ["**CPU ratio imds/bare (goal <= 1.25)**", f"**{rp['cpu_ratio']:.2f}**",
         dist("cpu_ratio")],
        ["CPU ratio imds metrics only / bare", f"{rp['cpu_ratio_metrics']:.2f}",
         dist("cpu_ratio_metrics")],
        ["CPU ratio imds without telemetry / bare", f"{rp['cpu_ratio_no_telemetry']:.2f}",
         dist("cpu_ratio_no_telemetry")],
        ["**telemetry share of CPU (goal <= 10%)**", f"**{rp['telemetry_share']:.1%}**",
         dist("telemetry_share", percent=True)],
        ["**metrics share of CPU (goal <= 5%)**", f"**{rp['metrics_share']:.1%}**",
         dist("metrics_share", percent=True)],
        ["per round: CPU ratio imds/bare",
         " ".join(f"{x:.2f}" for x in rp["cpu_ratio_per_round"]), ""],
        ["per round: telemetry share / metrics share",
         " ".join(f"{x:.1%}" for x in rp["telemetry_share_per_round"]),
         " ".join(f"{x:.1%}" for x in rp["metrics_share_per_round"])],
        ["rounds with every server saturated (CPU/wall >= "
         f"{rp['saturated_at']:.0%})", f"{saturated} of {rp['rounds']}",
         "server CPU/wall per variant (median): " + ", ".join(
             f"{v} {rp[v]['server_busy']:.2f}" for v in VARIANTS)],
        ["other processes' CPU on core 0 / core 1 during the CPU runs (median, s/s)",
         f"{rp['others_core0']:.2f}", f"{rp['others_core1']:.2f}"],
        *[[f"{label} ms at 32 conns (imds / bare)", rp["imds"][key], rp["bare"][key]]
          for label, key in (("p50", "p50_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms"),
                             ("max", "max_ms"))],
        *[[f"{label} ratio imds/bare{goal} (median of {rp['latency_rounds']} rounds; range)",
           f"{rp[key + '_ratio']:.2f}", spread(rp[key + "_ratios"])]
          for label, key, goal in (("p50", "p50_ms", ""), ("p99", "p99_ms", " (goal <= 2)"),
                                   ("p99.9", "p999_ms", ""), ("max", "max_ms", ""))],
        ["p99 ms (imds metrics only / without telemetry)", rp["imds_metrics"]["p99_ms"],
         rp["imds_no_telemetry"]["p99_ms"]],
        ["requests/s in the CPU runs (imds / bare)", rp["imds"]["rps"], rp["bare"]["rps"]],
        ["load average (1 min) at each round", " ".join(f"{x:.2f}" for x in
                                                        rp["load_average_1m"]), ""],
        ["parked watchers", w["watchers"], w["parked_seen"]],
        ["KiB per watcher (goal <= 30)", w["kib_per_watcher"], ""],
        ["change -> last watcher answered, s (goal < 1; client / server side)",
         w["change_to_last_answer_s"], w["change_to_last_written_s"]],
        ["full GC pauses inside that window, s (server)", w["full_gc_in_window_s"], ""],
        ["busy machine (a CPU hog on the server's core): KiB per watcher",
         wb["kib_per_watcher"], f"{wb['watchers']} watchers, {wb['answered']} answered"],
        ["busy machine: change -> last watcher answered, s (goal < 1; client / server)",
         wb["change_to_last_answer_s"], wb["change_to_last_written_s"]],
        ["RSS KiB empty / 1,000 VMs", m["rss_empty_kib"], m["rss_loaded_kib"]],
        ["KiB per VM (view / view+cache)", m["kib_per_vm"], m["kib_per_vm_with_cache"]],
    ]
    md = write_results("server", figures, ["measure", "value", "compare"], rows)
    print(md.read_text())


def bare_server(port: int, answer: bytes) -> None:
    """The baseline: trio + httptools, keep-alive, the same bytes for every request."""
    import httptools
    import trio

    class Proto:
        def __init__(self) -> None:
            self.complete = 0

        def on_message_complete(self) -> None:
            self.complete += 1

    async def connection(stream: trio.SocketStream) -> None:
        proto = Proto()
        parser = httptools.HttpRequestParser(proto)
        async with stream:
            try:
                while data := await stream.receive_some(65536):
                    parser.feed_data(data)
                    if proto.complete:
                        await stream.send_all(answer * proto.complete)
                        proto.complete = 0
            except (trio.BrokenResourceError, httptools.HttpParserError):
                pass

    async def main() -> None:
        await trio.serve_tcp(connection, port, host="127.0.0.1")

    trio.run(main)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bare"]:
        bare_server(int(sys.argv[2]), Path(sys.argv[3]).read_bytes())
    elif sys.argv[1:2] == ["--watch-client"]:
        watch_client(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1:2] == ["--serve-watch"]:
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), watch=True)
    elif sys.argv[1:2] == ["--read-path"]:  # one part alone, printed (not written)
        summary = read_path()
        for variant in VARIANTS:
            summary[variant].pop("runs")
            summary[variant].pop("latency_runs")
        print(json.dumps(summary, indent=1))
    elif sys.argv[1:2] == ["--watchers"]:
        print(json.dumps(watchers(busy="--busy" in sys.argv), indent=1))
    elif sys.argv[1:2] == ["--many-vms"]:  # the RSS part alone, printed
        print(json.dumps(many_vms(), indent=1))
    elif sys.argv[1:2] == ["--serve-no-telemetry"]:
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), telemetry=False)
    else:
        main()
