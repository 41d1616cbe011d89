"""``FileLog.append_nowait`` and its ``Receipt``: back-pressure, waiting, cancellation and
storage failure (the ordering and durability contract is in ``EventLogContract``)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from imds_replica import Event, LogUnavailable, Receipt, StorageError, ValidationError, View
from imds_replica._log import FileLog

from ._helpers import FailingFdatasync, reopen


def _batch(i: int, size: int = 1) -> list[Event]:
    return [Event("s", ("k", str(i)), 1, "v" * size)]


async def test_queue_bound_refuses_without_queueing_then_accepts_again(
        tmp_path: Path) -> None:
    log = FileLog(tmp_path / "log", fsync="none", max_queued_bytes=2000)
    view = View()
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, view)
        accepted: list[Receipt] = []
        refused: trio.WouldBlock | None = None
        for i in range(1000):  # no checkpoint in between: the appender cannot run
            try:
                accepted.append(log.append_nowait(_batch(i, 100)))
            except trio.WouldBlock as exc:
                refused = exc
                break
        assert refused is not None
        assert "max_queued_bytes=2000" in str(refused)
        assert 10 < len(accepted) < 1000
        assert not any(r.done for r in accepted)
        await accepted[-1].wait()
        assert len(view) == len(accepted)  # the refused batch was not queued
        again = log.append_nowait(_batch(5000))  # room again once the queue was written
        assert await again.wait() == (True,)
        nursery.cancel_scope.cancel()
    recovered, _ = await reopen(tmp_path / "log")
    assert recovered.digest() == view.digest()
    assert len(recovered) == len(accepted) + 1


async def test_receipt_nobody_waits_on_is_still_written(tmp_path: Path) -> None:
    log = FileLog(tmp_path / "log")
    view = View()
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, view)
        receipt = log.append_nowait(_batch(1))
        with pytest.raises(RuntimeError, match="before the batch was written"):
            receipt.result()
        del receipt
        await log.append(_batch(2))
        nursery.cancel_scope.cancel()
    recovered, _ = await reopen(tmp_path / "log")
    assert len(recovered) == 2


async def test_cancelled_wait_leaves_the_batch_queued(tmp_path: Path) -> None:
    log = FileLog(tmp_path / "log")
    view = View()
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, view)
        receipt = log.append_nowait(_batch(1))
        with trio.CancelScope() as scope:
            scope.cancel()
            await receipt.wait()
        assert scope.cancelled_caught
        assert await receipt.wait() == (True,)  # a new wait after the cancelled one
        with trio.testing.assert_checkpoints():  # done already: still a checkpoint
            assert await receipt.wait() == (True,)
        nursery.cancel_scope.cancel()
    recovered, _ = await reopen(tmp_path / "log")
    assert len(recovered) == 1


async def test_one_waiter_per_receipt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()  # holds the group's fdatasync, so the receipt stays pending
    real = os.fdatasync

    def held(fd: int) -> None:
        gate.wait(10)
        real(fd)

    log = FileLog(tmp_path / "log")
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, View())
        monkeypatch.setattr(os, "fdatasync", held)  # after opening, which syncs too
        receipt = log.append_nowait(_batch(1))
        nursery.start_soon(receipt.wait)
        await trio.testing.wait_all_tasks_blocked()
        assert not receipt.done
        with pytest.raises(RuntimeError, match="already waiting"):
            await receipt.wait()
        gate.set()
        assert await log.append(_batch(2)) == (True,)
        assert receipt.result() == (True,)
        nursery.cancel_scope.cancel()


async def test_oversized_batch_is_refused_before_queueing(tmp_path: Path) -> None:
    log = FileLog(tmp_path / "log", fsync="none", max_record_bytes=10_000)
    view = View()
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, view)
        with pytest.raises(ValidationError, match="per batch"):
            log.append_nowait([Event("s", ("k", str(i)), 1, "x" * 1000) for i in range(20)])
        assert await log.append_nowait(_batch(1)).wait() == (True,)
        stats = log.statistics()
        nursery.cancel_scope.cancel()
    assert (stats.batches, len(view)) == (1, 1)


async def test_storage_failure_fails_every_queued_receipt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failing = FailingFdatasync(monkeypatch)
    log = FileLog(tmp_path / "log", snapshot_every=None)
    view = View()
    async with trio.open_nursery() as nursery:  # the log task lives on: no error out of it
        await nursery.start(log.run, view)
        assert await log.append_nowait(_batch(0)).wait() == (True,)
        failing.armed = True
        receipts = [log.append_nowait(_batch(i)) for i in range(1, 4)]
        with pytest.raises(LogUnavailable, match="read-only until the process restarts"):
            await receipts[-1].wait()
        for receipt in receipts:
            assert receipt.done
            with pytest.raises(LogUnavailable):
                receipt.result()
        with pytest.raises(LogUnavailable):
            log.append_nowait(_batch(9))
        assert len(view) == 1  # nothing of the failed group was applied
        nursery.cancel_scope.cancel()
    failing.restore()
    recovered, _ = await reopen(tmp_path / "log")
    assert recovered.document(("k", "0")) == "v"


async def test_append_nowait_before_run_and_after_close(tmp_path: Path) -> None:
    log = FileLog(tmp_path / "log", fsync="none")
    with pytest.raises(RuntimeError, match="before run"):
        log.append_nowait(_batch(1))
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, View())
        nursery.cancel_scope.cancel()
    with pytest.raises(StorageError, match="closed"):
        log.append_nowait(_batch(1))
