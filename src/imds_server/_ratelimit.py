"""A token bucket per VM; time is an argument, so tests step it by hand."""

from __future__ import annotations

import heapq
import math


class TokenBuckets:
    """``rate`` tokens per second per key, holding at most ``burst``; ``rate == 0`` disables.

    A key's bucket starts full. Buckets that have refilled completely are forgotten when
    the table reaches ``max_keys``, so a stream of distinct keys cannot grow memory. If
    keys come faster than buckets refill (thousands of strangers within a refill time),
    forgetting the full ones frees nothing: then the table keeps the half most recently
    used, so that the next sweep is hundreds of new keys away (each new key swept the
    whole table again, and the table grew without bound). A key forgotten that way starts
    full again; a key in use (a flooder) is among the most recent and is kept.
    """

    def __init__(self, rate: float, burst: float | None = None, *, max_keys: int = 100_000):
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self.max_keys = max(2, max_keys)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self.sweeps = 0  # times the table was full (for tests and statistics)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, now: float) -> float:
        """Spend one token: 0.0 if allowed, else seconds until one will be available."""
        if self.rate <= 0:
            return 0.0
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        if tokens >= 1.0:
            if key not in self._buckets and len(self._buckets) >= self.max_keys:
                self._sweep(now)
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _sweep(self, now: float) -> None:
        self.sweeps += 1
        full = [k for k, (t, at) in self._buckets.items()
                if t + (now - at) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
        keep = self.max_keys // 2
        if len(self._buckets) > keep:
            recent = heapq.nlargest(keep, self._buckets.items(), key=_last_used)
            self._buckets = dict(recent)

    @staticmethod
    def retry_after(wait: float) -> int:
        """Whole seconds for ``Retry-After`` (at least 1)."""
        return max(1, math.ceil(wait))


def _last_used(item: tuple[str, tuple[float, float]]) -> float:
    return item[1][1]
