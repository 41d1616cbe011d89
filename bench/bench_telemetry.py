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
   thread, comes out of throughput. Runs alternate off/metrics/on for ``ROUNDS`` rounds
   (the machines are shared and noisy, so drift hits every variant alike). Reported per
   variant: requests/s (median over rounds) and server CPU µs per request (from
   ``/proc/PID/stat``, less sensitive to other tenants); the cost is ``1 - on/off`` of the
   median requests/s, with each round's own ratio listed.
2. The observer alone, single-threaded: µs per ``request(record)`` on the request path,
   and the writer thread's µs per line, which with one core is paid by the same core.
"""

from __future__ import annotations

import json
import os
import re
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

from bench._common import write_results

TARGET = "/metadata/instance?api-version=2021-02-01"
CONNECTIONS = 32
SECONDS = 4
ROUNDS = 5
#: variant → the server's ``[telemetry]`` table.
VARIANTS: dict[str, dict[str, Any]] = {
    "off": {"metrics": False, "access_log": False},
    "metrics": {"access_log": False},
    "on": {},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pin(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") else []


def _toml(telemetry: dict[str, Any]) -> str:
    lines = ["[telemetry]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in telemetry.items()]
    return "\n".join(lines) + "\n"


class _Server:
    def __init__(self, name: str, telemetry: dict[str, Any], workdir: Path) -> None:
        self.name = name
        self.port, self.admin = _free_port(), _free_port()
        self.log_dir = workdir / f"logs-{name}"
        config = workdir / f"{name}.toml"
        config.write_text(_toml({"log_dir": str(self.log_dir), **telemetry}))
        self.proc = subprocess.Popen(
            [*_pin(0), sys.executable, "-m", "imds_server", "serve", "--demo",
             "--rate-limit", "0", "--listen", f"127.0.0.1:{self.port}",
             "--admin-listen", f"127.0.0.1:{self.admin}", "--config", str(config)],
            stderr=subprocess.DEVNULL)
        _wait_http(f"http://127.0.0.1:{self.admin}/healthz")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

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


def _wait_http(url: str) -> None:
    for _ in range(400):
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} never answered")


def _wrk(server: _Server, seconds: float = SECONDS) -> dict[str, float]:
    before = _cpu_seconds(server.proc.pid)
    out = subprocess.run(
        [*_pin(1), "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-H", "Metadata: true",
         f"http://127.0.0.1:{server.port}{TARGET}"],
        capture_output=True, text=True, check=True).stdout
    cpu = _cpu_seconds(server.proc.pid) - before
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{server.name}: {non2xx.group(1)} non-2xx answers")
    return {"requests": requests, "rps": requests / seconds,
            "cpu_us_per_request": cpu / requests * 1e6}


def read_path(workdir: Path) -> dict[str, Any]:
    servers = {name: _Server(name, table, workdir) for name, table in VARIANTS.items()}
    try:
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        for server in servers.values():  # warm-up: caches filled, first log file opened
            _wrk(server, 1)
        for _ in range(ROUNDS):
            for name, server in servers.items():
                runs[name].append(_wrk(server))
        time.sleep(0.3)  # the writer's last batch
        logged = servers["on"].logged_lines()
    finally:
        for server in servers.values():
            server.stop()
    out: dict[str, Any] = {"rounds": ROUNDS, "seconds": SECONDS, "connections": CONNECTIONS}
    for name, results in runs.items():
        out[name] = {
            "rps_median": statistics.median(r["rps"] for r in results),
            "cpu_us_per_request_median": statistics.median(
                r["cpu_us_per_request"] for r in results),
            "rps_runs": [round(r["rps"]) for r in results],
        }
    off, on, met = out["off"], out["on"], out["metrics"]
    out["overhead_on"] = 1 - on["rps_median"] / off["rps_median"]
    out["overhead_metrics"] = 1 - met["rps_median"] / off["rps_median"]
    out["overhead_on_per_round"] = [
        round(1 - b["rps"] / a["rps"], 4) for a, b in zip(runs["off"], runs["on"], strict=True)]
    out["cpu_overhead_on"] = (on["cpu_us_per_request_median"]
                              / off["cpu_us_per_request_median"] - 1)
    out["access_lines_written"] = logged
    out["requests_sent_on"] = sum(r["requests"] for r in runs["on"])
    return out


def main() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk (or scripts/install-tools)")
    with tempfile.TemporaryDirectory() as tmp:
        rp = read_path(Path(tmp))
    figures = {"read_path": rp}
    rows = [
        *[[f"read path, {name}: req/s (median of {ROUNDS})", rp[name]["rps_median"],
           " ".join(str(x) for x in rp[name]["rps_runs"])] for name in VARIANTS],
        *[[f"read path, {name}: server CPU µs/request", rp[name]["cpu_us_per_request_median"],
           ""] for name in VARIANTS],
        ["throughput cost, metrics + access log (goal <= 10%)", f"{rp['overhead_on']:.1%}",
         "per round: " + " ".join(f"{x:.1%}" for x in rp["overhead_on_per_round"])],
        ["throughput cost, metrics only", f"{rp['overhead_metrics']:.1%}", ""],
        ["server CPU per request, on vs off", f"{rp['cpu_overhead_on']:+.1%}", ""],
    ]
    md = write_results("telemetry", figures, ["measure", "value", "detail"], rows)
    print(md.read_text())


if __name__ == "__main__":
    main()
