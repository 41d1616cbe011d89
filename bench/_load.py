"""Load-generation helpers shared by the server benchmarks: ports, process pinning, CPU
from ``/proc``, waiting for a server, stopping it, and one ``wrk`` run.

The servers under test are pinned to core 0 and ``wrk`` to core 1 (``pin``), so the load
generator's CPU is never in the server's figure.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin(core: int) -> list[str]:
    """The command prefix that runs a process on ``core`` (nothing without ``taskset``)."""
    return ["taskset", "-c", str(core)] if shutil.which("taskset") else []


def cpu_seconds(stat: Path) -> float:
    """User + system CPU seconds from a ``/proc/.../stat`` file (a process or a thread)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    return cpu_seconds(Path(f"/proc/{pid}/stat"))


def thread_cpu(pid: int) -> tuple[float, float]:
    """(the main thread's — the event loop's — CPU seconds, the other threads' together)."""
    loop = other = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            seconds = cpu_seconds(task / "stat")
        except OSError:
            continue  # a worker thread that just ended
        if task.name == str(pid):
            loop = seconds
        else:
            other += seconds
    return loop, other


def wait_http(url: str, attempts: int = 400) -> None:
    """Until ``url`` answers 200 (a server starting up)."""
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} never answered")


def wait_tcp(port: int, attempts: int = 200) -> None:
    """Until 127.0.0.1:``port`` accepts connections."""
    for _ in range(attempts):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a graceful drain), then SIGKILL after 20 s."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


#: Printed by wrk at the end of a run: the latency distribution in µs (wrk's own
#: ``--latency`` table stops at p99 and rounds).
_PERCENTILES_LUA = """
done = function(summary, latency, requests)
  io.write(string.format("imds-percentiles %d %d %d %d %d\\n", latency:percentile(50),
    latency:percentile(99), latency:percentile(99.9), latency.max, summary.requests))
end
"""


def wrk(url: str, *, seconds: float, connections: int = 32,
        latency: bool = False) -> dict[str, float]:
    """One ``wrk`` run pinned to core 1 with ``Metadata: true``: requests, non-2xx answers
    and (with ``latency``) p50, p99, p99.9 and max in milliseconds (``p50_ms`` ...)."""
    script = None
    if latency:
        fd, script = tempfile.mkstemp(suffix=".lua")
        os.write(fd, _PERCENTILES_LUA.encode())
        os.close(fd)
    command = [*pin(1), "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s",
               *(["-s", script] if script else []), "-H", "Metadata: true", url]
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    finally:
        if script:
            os.unlink(script)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result: dict[str, float] = {"requests": requests,
                                "non_2xx": int(non2xx.group(1)) if non2xx else 0}
    if latency:
        found = re.search(r"imds-percentiles (\d+) (\d+) (\d+) (\d+)", out)
        assert found is not None, out
        for name, value in zip(("p50_ms", "p99_ms", "p999_ms", "max_ms"), found.groups(),
                               strict=True):
            result[name] = int(value) / 1000
    return result
