"""Fixtures of the telemetry tests: records, the telemetry command as a subprocess."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import trio

from imds_server._observe import AccessRecord

#: The telemetry commands without the server's CLI (same code as ``imds-server ...``).
COMMAND = (sys.executable, "-m", "imds_server.telemetry")


def access(**overrides: object) -> AccessRecord:
    fields: dict[str, object] = dict(
        time=1_714_557_600.25, request_id="r-1", caller="10.0.0.4", vm="vm-1", method="GET",
        route="/metadata/instance", path="/metadata/instance", api_version="2021-02-01",
        status=200, bytes=1500, seconds=0.0003)
    fields.update(overrides)
    return AccessRecord(**fields)  # type: ignore[arg-type]


async def stop_process(process: trio.Process) -> None:
    """SIGTERM, up to 10 s to exit, then SIGKILL; closes its captured stdout."""
    process.terminate()
    with trio.move_on_after(10):
        await process.wait()
    process.kill()
    await process.wait()
    if process.stdout is not None:
        await process.stdout.aclose()


async def run_command(args: Sequence[str], *, seconds: float = 30.0
                      ) -> trio.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with trio.fail_after(seconds):
        return await trio.run_process([*COMMAND, *args], capture_stdout=True,
                                      capture_stderr=True, check=False, env=env)
