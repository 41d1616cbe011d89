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
import sys
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
        result.update(_percentiles(out))
    return result


def _percentiles(out: str) -> dict[str, float]:
    """p50/p99/p99.9/max in ms from the line our wrk Lua ``done()`` prints."""
    found = re.search(r"imds-percentiles (\d+) (\d+) (\d+) (\d+)", out)
    assert found is not None, out
    return {name: int(value) / 1000 for name, value in
            zip(("p50_ms", "p99_ms", "p999_ms", "max_ms"), found.groups(), strict=True)}


def task_cpu_ns(pid: int) -> tuple[int, int]:
    """(nanoseconds on CPU of the main thread — the event loop —, of all threads together),
    from ``/proc/PID/task/*/schedstat``: the scheduler's own clock, exact, where ``stat``
    counts in 10 ms ticks."""
    loop = total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ns = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a worker thread that just ended
        total += ns
        if task.name == str(pid):
            loop = ns
    return loop, total


def involuntary_switches(pid: int) -> int:
    """Times the process's threads were preempted (another task took their core)."""
    count = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    count += int(line.split()[1])
        except OSError:
            continue
    return count


def core_busy() -> dict[int, float]:
    """Busy seconds per core since boot (``/proc/stat``: all but idle, iowait and steal)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            f = [int(x) for x in fields[:8]]
            out[int(name[3:])] = (f[0] + f[1] + f[2] + f[5] + f[6]) / tick
    return out


def steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests, all cores, since boot."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def measured_wrk(url: str, pid: int, *, seconds: float, connections: int = 32,
                 latency: bool = False, server_core: int = 0,
                 load_core: int = 1) -> dict[str, float]:
    """One ``wrk`` run (as ``wrk()``) with what is needed to trust its figures:

    - ``cpu_us_per_request``/``loop_us_per_request``: the server's CPU (all threads / the
      event loop) per answered request, from the scheduler's clock;
    - ``server_busy``: the server's CPU over the wall time (about 1: saturated, so the
      figure is the cost of a request and not of waking up for one);
    - ``wrk_busy``: the load generator's CPU over the wall time (near 1: it, not the
      server, set the pace);
    - ``others_core0``/``others_core1``: CPU seconds per second that other processes took on
      the server's and the load generator's cores meanwhile, and ``preempted``: how often
      the server was preempted: the disturbance, per run;
    - ``steal``: seconds the hypervisor took from this machine meanwhile (all cores)."""
    loop0, cpu0 = task_cpu_ns(pid)
    switches0 = involuntary_switches(pid)
    busy0, steal0 = core_busy(), steal_seconds()
    started = time.perf_counter()
    script = None
    if latency:
        fd, script = tempfile.mkstemp(suffix=".lua")
        os.write(fd, _PERCENTILES_LUA.encode())
        os.close(fd)
    command = [*pin(load_core), "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s",
               *(["-s", script] if script else []), "-H", "Metadata: true", url]
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if script:
            os.unlink(script)
    if proc.returncode:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out}")
    wall = time.perf_counter() - started
    loop1, cpu1 = task_cpu_ns(pid)
    busy1, steal1 = core_busy(), steal_seconds()
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    cpu, loop = (cpu1 - cpu0) / 1e9, (loop1 - loop0) / 1e9
    wrk_cpu = usage.ru_utime + usage.ru_stime
    result: dict[str, float] = {
        "requests": requests, "rps": requests / seconds,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "cpu_us_per_request": cpu / requests * 1e6,
        "loop_us_per_request": loop / requests * 1e6,
        "server_busy": cpu / wall, "wrk_busy": wrk_cpu / wall,
        "others_core0": max(0.0, busy1[server_core] - busy0[server_core] - cpu) / wall,
        "others_core1": max(0.0, busy1[load_core] - busy0[load_core] - wrk_cpu) / wall,
        "preempted": involuntary_switches(pid) - switches0,
        "steal": steal1 - steal0,
    }
    if latency:
        result.update(_percentiles(out))
    return result


_CALIBRATION = """
import time
d = {}
started = time.process_time()
for i in range(2_000_000):
    d[i & 1023] = i
print((time.process_time() - started) / 2e6 * 1e9)
"""


def machine_speed(core: int = 0) -> float:
    """CPU nanoseconds per step of a fixed pure-Python loop (a dict store) on ``core``: how
    fast this machine is right now. It moves with the host (other guests on the same
    hardware slow every instruction without any steal time showing), so absolute µs per
    request from runs at different speeds differ by as much; same-run ratios do not."""
    out = subprocess.run([*pin(core), sys.executable, "-c", _CALIBRATION],
                         capture_output=True, text=True, check=True).stdout
    return float(out)
