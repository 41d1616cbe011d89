"""Refusals logged in aggregate: one access line per caller and reason per interval.

A flood of refusals (an unmapped address asking a million times, a VM far over its rate
limit) must not flush the audit trail: the cold log keeps days of lines by size, and one
line per refused request rotated fourteen days away in two minutes. The first refusal of a
caller for a reason in an interval is logged as any answer is; the others are counted
(metrics stay exact) and summed up in one line when the interval ends.
"""

from __future__ import annotations

import logging

log = logging.getLogger("imds_server.refusals")

#: The refusals a caller can repeat at will (the others are one-offs of a request).
AGGREGATED = frozenset({"unknown-caller", "rate-limited"})
#: Distinct (caller, reason) pairs kept per interval; past it, pairs share one ``*`` line.
MAX_KEYS = 10_000


class RefusalDigest:
    """``first(caller, reason)`` says whether to log this refusal in full; ``flush()``
    returns ``(caller, reason, repeats)`` of the interval just ended, and starts anew."""

    def __init__(self) -> None:
        self._repeats: dict[tuple[str, str], int] = {}

    def first(self, caller: str, reason: str) -> bool:
        key = (caller, reason)
        repeats = self._repeats.get(key)
        if repeats is None:
            if len(self._repeats) < MAX_KEYS:
                self._repeats[key] = 0
                return True
            key = ("*", reason)
            repeats = self._repeats.get(key, 0)
        self._repeats[key] = repeats + 1
        return False

    def flush(self) -> list[tuple[str, str, int]]:
        out = [(caller, reason, n) for (caller, reason), n in self._repeats.items() if n]
        self._repeats = {}
        return out

    def log(self, interval: float) -> int:
        """Log the interval's summary lines; returns how many were written."""
        summary = self.flush()
        for caller, reason, repeats in summary:
            log.info("refused %d more requests from %s (%s) in the last %g s",
                     repeats, caller, reason, interval,
                     extra={"fields": {"caller": caller, "refused": reason,
                                       "count": repeats}})
        return len(summary)
