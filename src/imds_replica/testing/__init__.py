"""Public testing helpers, like ``trio.testing``: port contracts, strategies, simulations.

Needs the test extras (pytest, hypothesis).
"""

from ._contracts import EventLogContract

__all__ = ["EventLogContract"]
