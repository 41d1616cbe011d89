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
