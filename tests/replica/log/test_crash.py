"""kill -9 at random moments: nothing acknowledged is lost, duplicated or corrupted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ._harness import kill_loop

pytestmark = pytest.mark.integration
SOAK_KILLS = int(os.environ.get("IMDS_SOAK_KILLS", "5000"))


def test_kill_9_while_appending(tmp_path: Path) -> None:
    stats = kill_loop(tmp_path / "log", 200, mode="normal", seed=1)
    assert stats["kills"] >= 200 - stats["exited"]
    assert stats["exited"] == 0
    # The writers got real work done between kills: each cycle that waited for an
    # acknowledgement adds its own (ids never repeat), on a loaded machine too.
    assert stats["ack_waits"] > 50
    assert stats["acked"] >= stats["ack_waits"]


def test_kill_9_while_appending_pipelined(tmp_path: Path) -> None:
    stats = kill_loop(tmp_path / "log", 100, mode="pipelined", seed=5)
    assert stats["exited"] == 0
    assert stats["ack_waits"] > 25
    assert stats["acked"] >= stats["ack_waits"]


def test_kill_9_during_compaction_and_snapshots(tmp_path: Path) -> None:
    stats = kill_loop(tmp_path / "log", 150, mode="maint", seed=2)
    assert stats["exited"] == 0
    assert stats["ack_waits"] > 35
    assert stats["acked"] >= stats["ack_waits"]


@pytest.mark.slow
def test_soak_kill_9(tmp_path: Path) -> None:
    stats = kill_loop(tmp_path / "log", SOAK_KILLS, mode="normal", seed=3)
    assert stats["exited"] == 0
    stats = kill_loop(tmp_path / "maint", SOAK_KILLS // 5, mode="maint", seed=4)
    assert stats["exited"] == 0
