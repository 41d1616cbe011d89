"""Issue 14.1 on a real small file system: a full disk fails the writes that hit it (503),
the log refuses writes while it is full and serves reads all along, takes writes again once
space is back, and loses nothing it acknowledged."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from imds_replica import Event, LogUnavailable, View
from imds_replica._log import FileLog, verify_log

from ..._tools import small_tmpfs
from ._helpers import eventually, reopen

pytestmark = pytest.mark.integration


def _event(n: int) -> Event:
    return Event("agent", ("vms", f"vm{n % 5}", "compute", f"f{n}"), n, {"n": n, "pad": "x" * 3000})


async def test_a_full_tmpfs_refuses_writes_then_takes_them_again(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "mnt", "2m") as mount:
        filler = mount / "filler"
        filler.write_bytes(b"\0" * 1_200_000)
        log = FileLog(mount / "log", retry_seconds=0.05, segment_bytes=256 * 1024)
        view = View()
        acked: list[int] = []
        refused: list[int] = []
        error = LogUnavailable("none yet", reason="none")
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run, view)
            n = 0
            while not refused:
                n += 1
                try:
                    await log.append([_event(n)])
                    acked.append(n)
                except LogUnavailable as exc:
                    refused.append(n)
                    error = exc
                assert n < 10_000, "the file system never filled up"
            assert len(acked) > 20
            assert (error.status, error.reason) == (503, "full"), error.message
            assert "No space left on device" in error.message
            for m in range(n + 1, n + 20):  # refused at once while full; reads go on
                with pytest.raises(LogUnavailable):
                    await log.append([_event(m)])
                refused.append(m)
                assert view.document(("vms", "vm1"))["compute"]  # type: ignore[index]
            stats = log.statistics()
            assert (stats.writable, stats.state) == (False, "full")
            assert "No space left on device" in str(stats.error)
            filler.unlink()  # space is back
            await eventually(lambda: log.statistics().writable)
            for m in range(n + 100, n + 120):
                await log.append([_event(m)])
                acked.append(m)
            nursery.cancel_scope.cancel()
        again, recovery = await reopen(mount / "log")
        assert verify_log(mount / "log").ok
        for m in acked:
            assert again.get(_event(m).key) == _event(m), m
        for m in refused:
            assert again.get(_event(m).key) is None, m  # refused: not half there either
        assert again.digest() == view.digest()
        assert not any("torn" in note for note in recovery.notes), recovery.notes
