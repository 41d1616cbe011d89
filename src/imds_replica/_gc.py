"""Pausing the cyclic garbage collector around a bulk load of long-lived objects.

Recovery (the log's replay) and a big admin batch both allocate millions of acyclic
objects that the view then keeps. With the collector running, every young collection
rescans the growing heap: with 1,000,000 keys that was half of the replay time. Paused,
the first collection after the load would still scan everything allocated meanwhile at
once (they are all in the youngest generation); ``freeze=True`` moves them to the
permanent generation instead, so they are never rescanned.

One helper for the whole process (the collector is process-wide): pauses nest and may
overlap from several threads (recovery runs in a worker thread); the collector is
re-enabled by the last one out, and only if it was enabled before the first one came in.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_pauses = 0
_was_enabled = False
_freeze = False


@contextlib.contextmanager
def gc_paused(*, freeze: bool = False) -> Iterator[None]:
    """Pause the collector for the block (process-wide, nestable, thread-safe).

    ``freeze``: when the last pause ends and the collector is re-enabled, first
    ``gc.freeze()`` everything alive (a pause that asked for it, even a nested one, makes
    the last one out freeze). Only for loads whose objects live on and form no cycles:
    frozen objects are never collected, so a cycle made elsewhere meanwhile is kept.
    """
    global _pauses, _was_enabled, _freeze
    with _lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            _freeze = False
            gc.disable()
        _pauses += 1
        _freeze = _freeze or freeze
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                if _freeze:
                    gc.freeze()
                gc.enable()
