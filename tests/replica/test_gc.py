"""The one collector pause (``imds_replica._gc``) that recovery and admin ingest share."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from imds_replica._gc import gc_paused


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_nests_and_restores() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # it was off before: left off
    finally:
        gc.enable()


def test_freezes_only_when_asked_and_only_at_the_last_exit() -> None:
    with gc_paused():
        pass
    assert gc.get_freeze_count() == 0
    with gc_paused():
        with gc_paused(freeze=True):
            kept = [object() for _ in range(10)]
        assert gc.get_freeze_count() == 0  # the outer pause is still on
    assert gc.get_freeze_count() > 0
    assert gc.isenabled()
    del kept
    gc.unfreeze()
    with gc_paused():  # a later pause does not inherit an earlier one's freeze
        pass
    assert gc.get_freeze_count() == 0


def test_does_not_freeze_when_the_collector_was_off_before() -> None:
    gc.disable()
    try:
        with gc_paused(freeze=True):
            pass
        assert gc.get_freeze_count() == 0
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_overlapping_pauses_from_threads() -> None:
    """A recovery in a worker thread and a pause on the loop overlap: the collector comes
    back once, after the last of them."""
    inside, release = threading.Event(), threading.Event()

    def worker() -> None:
        with gc_paused():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=worker)
    with gc_paused():
        thread.start()
        assert inside.wait(10)
    assert not gc.isenabled()  # the worker still holds its pause
    release.set()
    thread.join(10)
    assert gc.isenabled()


def test_admin_ingest_and_recovery_share_the_helper() -> None:
    from imds_replica._log import _filelog, _replay
    from imds_server import _ingest

    assert _replay.gc_paused is gc_paused
    assert _filelog.gc_paused is gc_paused
    with _ingest.gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            pass
        assert not gc.isenabled()  # one count: the inner exit does not re-enable
    assert gc.isenabled()
    # An admin batch freezes nothing: its request, alive at the end of the pause, would be
    # frozen with it and never freed (tests/server/test_ingest.py, readpath session 3).
    assert gc.get_freeze_count() == 0
