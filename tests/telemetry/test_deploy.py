"""The deploy files: promtool checks the scrape config and runs the alert rules' tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests._tools import require_tool

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
pytestmark = pytest.mark.integration


async def promtool(*args: str) -> trio.CompletedProcess[bytes]:
    tool = require_tool("promtool", "prometheus")
    with trio.fail_after(60):
        return await trio.run_process([tool, *args], cwd=PROMETHEUS, capture_stdout=True,
                                      capture_stderr=True, check=False)


async def test_alert_rules_pass_their_unit_tests() -> None:
    tests = sorted(str(p.relative_to(PROMETHEUS)) for p in (PROMETHEUS / "tests").glob("*.yml"))
    assert tests
    result = await promtool("test", "rules", *tests)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


async def test_scrape_config_and_rules_are_valid() -> None:
    result = await promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_every_alert_carries_a_logs_command_and_link() -> None:
    rules = (PROMETHEUS / "rules" / "imds.rules.yml").read_text()
    alerts = rules.count("- alert: ")
    assert alerts >= 13
    assert rules.count("logs_command: \"imds-server logs query --store ") == alerts
    assert rules.count("logs_link: \"https://") == alerts


def test_rendered_logs_commands_run_as_written(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The commands promtool's tests assert (those whose window starts after 1970's first
    hour) run unchanged but for --store and find the alert's lines."""
    import gzip
    import json
    import re
    import shlex

    from imds_server.telemetry import render_access, store_batch
    from imds_server.telemetry.__main__ import main

    from .conftest import access

    for cluster in ("c1", "c3"):
        lines = [render_access(access(time=t, request_id=f"{cluster}-{t}"))
                 for t in range(3600, 25_000, 600)]
        lines.append(json.dumps({"time": "1970-01-01T03:00:00.000000Z", "level": "error",
                                 "logger": "imds_replica", "message": "fsync slow"}))
        assert store_batch(tmp_path, cluster, "m1", f"{25_000 * 10**9:020d}-{'ab' * 8}",
                           gzip.compress(("\n".join(lines) + "\n").encode()))
    expected = "\n".join(p.read_text() for p in (PROMETHEUS / "tests").glob("*.yml"))
    commands = [shlex.split(c) for c in re.findall(r'logs_command: "(.*)"', expected)]
    usable = [c for c in commands if int(c[c.index("--since") + 1]) >= 0]
    assert len(usable) >= 4
    for command in usable:
        assert command[:3] == ["imds-server", "logs", "query"]
        args = command[1:]
        args[args.index("--store") + 1] = str(tmp_path)
        assert main([*args, "--format", "json"]) == 0, command
        out = capsys.readouterr().out
        assert out.strip(), command  # the alert's window has lines
