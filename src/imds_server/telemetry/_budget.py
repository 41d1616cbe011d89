"""The warm path's volume budget: what of every line kept locally is worth uploading.

``WarmBudget.choose`` runs on the writer thread, over a batch as the pipeline queued it
(access tuples, component ``Line``s) and the lines rendered from it, and returns the lines
for the warm buffer. In order:

1. Access lines: every error and refusal (status >= 400 or a refusal reason) and every slow
   answer (``slow_seconds``; long polls excluded) is kept. Of the rest, a deterministic
   ``sample_rate`` is kept, chosen by the request id (CRC-32 of it below the rate: the same
   request is chosen on every host and every run), and each sampled line carries
   ``"sample_rate"`` so counts can be scaled back (``count(*) / sample_rate``); a line
   without it stands for itself.
2. Component lines: a token bucket per logger (``logger_rate`` lines a second, bursts of
   ``logger_burst``); beyond, dropped from the warm path.
3. Lines longer than ``max_line_bytes`` are truncated (the longest string fields cut, the
   line stays one JSON object with ``"truncated_bytes"``: its original size), not dropped.
4. The host's budget: at most ``budget_lines`` lines per ``interval``; beyond, dropped.
   The last ``budget_reserve`` share of it is kept for errors (access answers >= 500,
   component lines at ERROR and above), so a flood of other lines that exhausts the
   budget cannot hide the errors an on-call engineer is looking for.

Every line not uploaded is still in the cold file, and is counted: sampled out, or dropped
by reason (``throttled``, ``over-budget``), plus truncations.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Sequence
from typing import Any

import attrs

from ._jsonlog import Line, QueuedAccess, RenderedAccess

_SCALE = 2**32


@attrs.frozen
class BudgetCounts:
    kept: int = 0
    sampled_out: int = 0
    throttled: int = 0
    over_budget: int = 0
    truncated: int = 0


def sampled(request_id: str, rate: float) -> bool:
    """Deterministic: the same request id is in or out everywhere."""
    return zlib.crc32(request_id.encode("utf-8", "surrogatepass")) < rate * _SCALE


def truncate(line: str, limit: int) -> str:
    """``line`` (one JSON object and a newline) cut to at most ``limit`` bytes by shortening
    its long string fields evenly; it stays a JSON object, with ``truncated_bytes``."""
    size = len(line.encode())
    doc: dict[str, Any] = json.loads(line)
    doc["truncated_bytes"] = size
    long = [k for k, v in doc.items() if isinstance(v, str) and len(v) > 64]
    original = {k: doc[k] for k in long}
    skeleton = json.dumps({**doc, **dict.fromkeys(long, "")}, separators=(",", ":"))
    share = max(0, (limit - len(skeleton.encode()) - 1) // max(1, len(long)) - 4)
    while True:
        for key in long:
            if len(original[key]) > share:
                doc[key] = original[key][:share] + "..."
        text = json.dumps(doc, separators=(",", ":")) + "\n"
        if len(text.encode()) <= limit or share == 0:
            return text
        share //= 2  # escapes or multi-byte characters took more than a byte each


class WarmBudget:
    """Stateful (token buckets, the interval's count); one per pipeline, writer thread only."""

    def __init__(self, *, level: int, sample_rate: float, slow_seconds: float,
                 logger_rate: float, logger_burst: float, max_line_bytes: int,
                 budget_lines: int, interval: float, budget_reserve: float = 0.1) -> None:
        self.level = level
        self.sample_rate = sample_rate
        self.slow_seconds = slow_seconds
        self.logger_rate = logger_rate
        self.logger_burst = logger_burst
        self.max_line_bytes = max_line_bytes
        self.budget_lines = budget_lines
        #: Lines a non-error may not take: the errors' share of the budget.
        self.reserved = min(budget_lines - 1, int(budget_lines * budget_reserve))
        self.interval = interval
        self._tag = f',"sample_rate":{sample_rate!r}}}\n'
        self._buckets: dict[str, tuple[float, float]] = {}  # logger → (tokens, at)
        self._window = -1.0
        self._used = 0
        self.counts = BudgetCounts()

    def choose(self, batch: Sequence[QueuedAccess | RenderedAccess | str | Line],
               lines: Sequence[str], levels: Sequence[int] | None,
               now: float) -> tuple[list[str], BudgetCounts]:
        """The lines of ``batch`` to upload (``lines[i]`` rendered from ``batch[i]``) and
        this call's counts (``counts`` keeps the totals)."""
        if now - self._window >= self.interval:
            self._window, self._used = now, 0
        out: list[str] = []
        sampled_out = throttled = over = cut = 0
        items: Sequence[Any] = batch  # access fields by position: ``_jsonlog.QUEUED_FIELDS``
        for i, item in enumerate(items):
            line = lines[i]
            if type(item) is str:
                # An access line queued without its fields (the observer queues them when
                # there is a budget): sampled on its text, as an ordinary answer.
                item = (item, item, 200, 0.0, False, None)
            if type(item) is tuple:
                if self.level > logging.INFO:
                    continue  # access lines are info
                if type(item[0]) is str:  # RenderedAccess
                    status, refused, seconds, watch = item[2], item[5], item[3], item[4]
                else:  # QueuedAccess
                    status, refused, seconds, watch = item[6], item[11], item[3], item[12]
                error = status >= 500
                if not (status >= 400 or refused is not None
                        or (seconds >= self.slow_seconds and not watch)):
                    if not sampled(item[1], self.sample_rate):
                        sampled_out += 1
                        continue
                    if self.sample_rate < 1:
                        line = line[:-2] + self._tag
            else:
                level = levels[i] if levels is not None else logging.INFO
                if level < self.level:
                    continue
                error = level >= logging.ERROR
                if not self._take(getattr(item, "logger", ""), now):
                    throttled += 1
                    continue
            if len(line) > self.max_line_bytes and len(line.encode()) > self.max_line_bytes:
                line = truncate(line, self.max_line_bytes)
                cut += 1
            if self._used >= self.budget_lines - (0 if error else self.reserved):
                over += 1
                continue
            self._used += 1
            out.append(line)
        now_counts = BudgetCounts(len(out), sampled_out, throttled, over, cut)
        c = self.counts
        self.counts = BudgetCounts(c.kept + len(out), c.sampled_out + sampled_out,
                                   c.throttled + throttled, c.over_budget + over,
                                   c.truncated + cut)
        return out, now_counts

    def _take(self, logger: str, now: float) -> bool:
        tokens, at = self._buckets.get(logger, (self.logger_burst, now))
        tokens = min(self.logger_burst, tokens + (now - at) * self.logger_rate)
        if tokens < 1:
            self._buckets[logger] = (tokens, now)
            return False
        self._buckets[logger] = (tokens - 1, now)
        if len(self._buckets) > 4096:  # bounded whatever loggers appear
            self._buckets.clear()
        return True
