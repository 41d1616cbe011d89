"""Showing that an await lets the event loop run (instead of holding it)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import trio


@contextlib.asynccontextmanager
async def loop_ticks() -> AsyncIterator[Callable[[], int]]:
    """Another task counts its scheduler turns while the body runs; the yielded function
    gives the turns since the body began. An await that holds the loop leaves it at ~0."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.lowlevel.checkpoint()
        before = ticks
        yield lambda: ticks - before
        nursery.cancel_scope.cancel()
