"""``PollSource``: HTTP GET of a regional endpoint, with ETag / If-None-Match.

Every ``interval`` the source asks the endpoint for its events, sending the ETag of the last
body it applied (its cursor, persisted in the log with that body's events, so a restarted
replica resumes with a conditional request). ``200`` carries ``{"events": [...]}`` in the
wire form of ``Event.from_dict`` (or anything a ``transform`` turns into events): those the
view does not already hold exactly are submitted as one batch with the new ETag (nothing is
submitted when there are none and the ETag is unchanged). ``304`` means nothing changed:
contact only.

Anything else — no connection, a timeout, a non-200/304 status, a body that is not JSON or
not events, a batch the replica refuses — is a failure: reported to liveliness, nothing of
the body applied, the cursor unchanged, and the next attempt waits an exponential backoff
with jitter (a tenacity wait strategy), capped; after a success the cadence is ``interval``
again. An answer carrying ``Retry-After`` (a 429 or 503, typically) is waited out: the next
attempt comes no sooner than it says (seconds or an HTTP date, capped by
``max_retry_after``), however short the backoff.

The normal interval is jittered by ``jitter`` (a fraction: each wait is drawn uniformly
from ``interval * (1 ± jitter)``), so a fleet of hosts restarted together does not poll its
region in step. ``rng`` (a ``random.Random``) makes the draws reproducible in tests.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import tenacity
import trio
from tenacity.wait import WaitBaseT

from ._codec import parse_json
from ._errors import ConfigError, ValidationError
from ._event import SOURCE_RE, Event
from ._liveliness import LivelinessPolicy
from ._source import SourceSink

logger = logging.getLogger(__name__)

#: Bodies larger than this are refused (and not read further).
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
#: Seconds allowed for closing our own HTTP client on shutdown.
_CLOSE_TIMEOUT = 5.0
#: The longest ``Retry-After`` honoured by default (a misconfigured endpoint asking for a
#: day must not silence the source for a day).
DEFAULT_MAX_RETRY_AFTER = 3600.0

Transform = Callable[[Any], Sequence[Event]]


def decode_body(data: bytes) -> Any:
    """The JSON value of a response body, or ``ValidationError`` saying why not."""
    try:
        return parse_json(data)
    except ValidationError as exc:
        raise ValidationError(f"body: {exc.message}") from None


def retry_after_seconds(value: str, now: float) -> float | None:
    """Seconds a ``Retry-After`` value asks to wait (RFC 9110: delay-seconds or an HTTP
    date, against ``now`` in seconds since the epoch); None when it is neither."""
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def events_from_body(body: Any) -> list[Event]:
    """The events of a ``{"events": [...]}`` body; ``ValidationError`` names a bad one."""
    if not isinstance(body, Mapping) or "events" not in body:
        raise ValidationError('body: must be an object {"events": [...]}')
    items = body["events"]
    if not isinstance(items, list):
        raise ValidationError('body: "events" must be a list')
    return [Event.from_dict(item, index=i) for i, item in enumerate(items)]


@attrs.frozen
class PollResult:
    """What one attempt did: ``ok`` is True for an applied 200 and for a 304."""

    ok: bool
    status: int | None = None  # the HTTP status, when there was an answer
    events: int = 0  # events in the applied body
    changed: int = 0  # of those, how many changed the view
    error: str | None = None
    retry_after: float | None = None  # seconds the answer asked us to wait (Retry-After)


@attrs.frozen
class PollSourceStatistics:
    attempts: int
    bodies: int  # 200s applied
    not_modified: int  # 304s
    failures: int
    consecutive_failures: int
    events: int  # events in applied bodies
    etag: str | None  # the cursor: ETag of the last applied body


class PollSource:
    """Polls ``url`` every ``interval`` seconds (see the module docstring for the protocol).

    ``client``: an ``httpx.AsyncClient`` to use (the caller closes it); by default the
    source opens its own for as long as ``run`` runs. ``timeout`` bounds a whole attempt
    (connect, headers and body). ``backoff``: the tenacity wait strategy applied to the
    number of consecutive failures; by default ``wait_random_exponential(multiplier=1,
    max=backoff_max)`` ("full jitter"), with ``backoff_max`` defaulting to 5 * ``interval``.
    ``transform`` turns the decoded JSON body into events when the endpoint does not speak
    ``{"events": [...]}``; whatever it raises is reported as a malformed body. ``jitter``
    (0 <= jitter < 1, default 0.1) spreads the normal interval, drawn from ``rng``;
    ``max_retry_after`` caps the ``Retry-After`` honoured.
    """

    def __init__(self, name: str, url: str, *, interval: float = 60.0,
                 policy: LivelinessPolicy | None = None, timeout: float = 10.0,
                 client: httpx.AsyncClient | None = None, transform: Transform | None = None,
                 backoff: WaitBaseT | None = None, backoff_max: float | None = None,
                 headers: Mapping[str, str] | None = None,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, jitter: float = 0.1,
                 rng: random.Random | None = None,
                 max_retry_after: float = DEFAULT_MAX_RETRY_AFTER) -> None:
        if not isinstance(name, str) or not SOURCE_RE.match(name):
            raise ConfigError(f"{name!r} must match [a-z0-9][a-z0-9_.-]{{0,63}}", key="name")
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ConfigError(f"{url!r}: {exc}", key="url") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(f"{url!r} must be an http:// or https:// URL", key="url")
        if not interval > 0:
            raise ConfigError(f"{interval!r} must be > 0 seconds", key="interval")
        if not timeout > 0:
            raise ConfigError(f"{timeout!r} must be > 0 seconds", key="timeout")
        if not 0 <= jitter < 1:
            raise ConfigError(f"{jitter!r} must be a fraction in [0, 1)", key="jitter")
        if not max_retry_after >= 0 or math.isinf(max_retry_after):
            raise ConfigError(f"{max_retry_after!r} must be >= 0 seconds",
                              key="max_retry_after")
        self.name = name
        self.url = url
        self.interval = interval
        self.timeout = timeout
        self.policy = policy or LivelinessPolicy(
            interval=interval, stale_after=3 * interval, expired_after=60 * interval
        )
        self.transform = transform
        self.backoff: WaitBaseT = backoff or tenacity.wait_random_exponential(
            multiplier=1.0, max=backoff_max if backoff_max is not None else 5 * interval
        )
        self.headers = dict(headers or {})
        self.max_body_bytes = max_body_bytes
        self.jitter = jitter
        self.max_retry_after = max_retry_after
        self._rng = rng if rng is not None else random.Random()
        self._given_client = client
        self._client: httpx.AsyncClient | None = None
        self._sink: SourceSink | None = None
        self._etag: str | None = None
        self._lock = trio.Lock()
        self._attempts = self._bodies = self._not_modified = 0
        self._failures = self._consecutive = self._events = 0

    # -- the loop --------------------------------------------------------------------------
    async def run(self, sink: SourceSink, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with self._open_client() as client:
            self._client = client
            self._sink = sink
            cursor = sink.cursor
            self._etag = cursor if isinstance(cursor, str) else None
            # Started before the first attempt: an unreachable region must not hold up the
            # replica's start (it serves what it recovered from its log meanwhile).
            task_status.started()
            while True:
                result = await self.poll_now()
                await trio.sleep(self.next_wait(result))

    @asynccontextmanager
    async def _open_client(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._given_client is not None:
            yield self._given_client
            return
        client = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
        try:
            yield client
        finally:
            # Shielded: the source is normally stopped by cancellation, and an unclosed
            # client leaks its pooled sockets.
            with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                await client.aclose()

    def next_wait(self, result: PollResult) -> float:
        """Seconds until the attempt after ``result``: the jittered interval after a
        success, else the backoff — but never less than a ``Retry-After`` asked for."""
        if result.ok:
            wait = self.interval * (1 + self.jitter * self._rng.uniform(-1.0, 1.0))
        else:
            wait = self.next_backoff()
        if result.retry_after is not None:
            wait = max(wait, min(result.retry_after, self.max_retry_after))
        return wait

    def next_backoff(self) -> float:
        """Seconds to wait after the current run of consecutive failures."""
        state = tenacity.RetryCallState(_RETRYING, None, (), {})
        state.attempt_number = max(1, self._consecutive)
        return float(self.backoff(state))

    @property
    def cursor(self) -> str | None:
        """The ETag of the last body applied (what the next request sends)."""
        return self._etag

    # -- one attempt -----------------------------------------------------------------------
    async def poll_now(self) -> PollResult:
        """Make one attempt now (serialized with the periodic ones) and report it."""
        if self._sink is None or self._client is None:
            raise RuntimeError("PollSource.poll_now() before run() started the source")
        async with self._lock:
            self._attempts += 1
            result = await self._attempt(self._sink, self._client)
            if result.ok:
                if self._consecutive:
                    logger.info("poll source %s: %s answers again", self.name, self.url)
                self._consecutive = 0
                self._sink.contact()
            else:
                assert result.error is not None
                self._failures += 1
                self._consecutive += 1
                # One warning per outage, not one per retry.
                log = logger.warning if self._consecutive == 1 else logger.debug
                log("poll source %s: %s (attempt %d failed)", self.name, result.error,
                    self._consecutive)
                self._sink.failure(result.error)
            return result

    async def _attempt(self, sink: SourceSink, client: httpx.AsyncClient) -> PollResult:
        headers = {"Accept": "application/json", **self.headers}
        if self._etag is not None:
            headers["If-None-Match"] = self._etag
        status: int | None = None
        body = bytearray()
        etag: str | None = None
        # A deadline on the whole attempt: httpx's timeouts are per read, which a server
        # trickling bytes would never trip.
        with trio.move_on_after(self.timeout) as deadline:
            try:
                async with client.stream("GET", self.url, headers=headers,
                                         timeout=self.timeout) as response:
                    status = response.status_code
                    if status == 304:
                        self._not_modified += 1
                        return PollResult(ok=True, status=304)
                    if status != 200:
                        retry = response.headers.get("retry-after")
                        return PollResult(
                            ok=False, status=status, error=f"HTTP {status} from {self.url}",
                            retry_after=None if retry is None else retry_after_seconds(
                                retry, sink.now()))
                    etag = response.headers.get("etag")
                    too_large = False
                    # Stopping by cancellation, not ``break``: the Cancelled raised at the
                    # next read unwinds httpx's chain of async generators, which a break
                    # would leave suspended (and trio warns about when they are collected).
                    with trio.CancelScope() as reading:
                        async for chunk in response.aiter_bytes():
                            body += chunk
                            if len(body) > self.max_body_bytes:
                                too_large = True
                                reading.cancel()
                    if too_large:
                        return PollResult(ok=False, status=status, error=(
                            f"body larger than {self.max_body_bytes} bytes"))
            except httpx.TimeoutException:
                return PollResult(ok=False, status=status,
                                  error=f"timed out after {self.timeout}s: {self.url}")
            except httpx.HTTPError as exc:
                return PollResult(ok=False, status=status,
                                  error=f"{type(exc).__name__}: {exc or 'failed'} ({self.url})")
        if deadline.cancelled_caught:
            return PollResult(ok=False, status=status,
                              error=f"timed out after {self.timeout}s: {self.url}")
        return await self._apply(sink, bytes(body), etag)

    async def _apply(self, sink: SourceSink, body: bytes, etag: str | None) -> PollResult:
        try:
            decoded = decode_body(body)
            events = events_from_body(decoded) if self.transform is None else (
                self._transformed(decoded))
            # Events the view already holds exactly are left out, so an endpoint without
            # ETags (answering 200 with the same body every time) does not grow the log.
            # Only this source's: one of another source must still reach the replica, which
            # refuses the body for it.
            fresh = [e for e in events if not (
                isinstance(e, Event) and e.source == self.name and sink.view.get(e.key) == e)]
            changed = 0
            if fresh or etag != self._etag:
                # The whole body is one batch: the replica validates it whole, so a bad event
                # (or one of another source) rejects it and nothing of it is applied.
                changed = (await sink.submit(fresh, etag)).changed
        except ValidationError as exc:
            return PollResult(ok=False, status=200, error=f"body refused: {exc.message}")
        self._etag = etag
        self._bodies += 1
        self._events += len(events)
        return PollResult(ok=True, status=200, events=len(events), changed=changed)

    def _transformed(self, decoded: Any) -> Sequence[Event]:
        assert self.transform is not None
        try:
            return list(self.transform(decoded))
        except ValidationError:
            raise
        except Exception as exc:  # a user transform's bug is reported, not fatal
            raise ValidationError(f"transform failed: {type(exc).__name__}: {exc}") from exc

    def statistics(self) -> PollSourceStatistics:
        return PollSourceStatistics(
            attempts=self._attempts, bodies=self._bodies, not_modified=self._not_modified,
            failures=self._failures, consecutive_failures=self._consecutive,
            events=self._events, etag=self._etag,
        )


#: Only gives the wait strategies the ``RetryCallState`` they take; never retries anything.
_RETRYING = tenacity.Retrying()
