"""``TokenCache``: tokens per (VM, identity, resource), reissued after half their lifetime.

Theory of operation. A token is *fresh* until half its lifetime has passed (then the next
request asks the issuer for a new one, as MSAL does at half-life) and *usable* until five
minutes before it expires (MSAL treats less as expired). ``obtain`` answers a fresh token
at once; otherwise it asks the issuer, one request per key at a time (concurrent callers
for the same key wait for the same answer). If the issuer fails, a usable token is served
instead (``served_stale``); only when there is none does the failure reach the guest
(500, which every client retries). The cache is bounded: resources are the guest's choice.
"""

from __future__ import annotations

import attrs
import trio

from ._port import IssuedToken, IssuerError, TokenIssuer, TokenRequest

CacheKey = tuple[str, str, str]  # (vm, identity's objectId, resource as asked)
EXPIRY_MARGIN = 300  # seconds: a token with less left is not handed out


@attrs.frozen
class TokenCacheStatistics:
    entries: int
    hits: int
    issued: int
    failures: int
    served_stale: int


def cache_key(request: TokenRequest) -> CacheKey:
    ident = request.identity
    return (request.vm, ident.object_id or ident.client_id, request.resource)


class _Flight:
    __slots__ = ("done", "error", "token")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.token: IssuedToken | None = None
        self.error: IssuerError | None = None


class TokenCache:
    def __init__(self, issuer: TokenIssuer, *, max_entries: int = 65536) -> None:
        self.issuer = issuer
        self.max_entries = max_entries
        self._tokens: dict[CacheKey, IssuedToken] = {}
        self._flights: dict[CacheKey, _Flight] = {}
        self.hits = self.issued = self.failures = self.served_stale = 0

    def statistics(self) -> TokenCacheStatistics:
        return TokenCacheStatistics(len(self._tokens), self.hits, self.issued, self.failures,
                                    self.served_stale)

    def fresh(self, key: CacheKey, now: float) -> IssuedToken | None:
        """The cached token if it is before its half-life (counted as a hit)."""
        token = self._tokens.get(key)
        if token is not None and now < token.refresh_at():
            self.hits += 1
            return token
        return None

    def usable(self, key: CacheKey, now: float) -> IssuedToken | None:
        token = self._tokens.get(key)
        if token is not None and token.expires_on - now > EXPIRY_MARGIN:
            return token
        return None

    async def obtain(self, request: TokenRequest, now: float) -> IssuedToken:
        """A fresh token, a new one, or (issuer failing) a usable one; else ``IssuerError``."""
        key = cache_key(request)
        token = self.fresh(key, now)
        if token is not None:
            return token
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = _Flight()
            try:
                flight.token = await self._issue(request, now)
            except IssuerError as exc:
                flight.error = exc
            finally:
                del self._flights[key]
                flight.done.set()
        else:
            await flight.done.wait()
        if flight.token is not None:
            return flight.token
        stale = self.usable(key, now)
        if stale is not None:
            self.served_stale += 1
            return stale
        assert flight.error is not None
        raise flight.error

    async def _issue(self, request: TokenRequest, now: float) -> IssuedToken:
        try:
            token = await self.issuer.issue(request, now)
        except IssuerError:
            self.failures += 1
            raise
        except Exception as exc:  # a bug or an unmapped error in an issuer: still ours
            self.failures += 1
            raise IssuerError(f"{type(exc).__name__}: {exc}") from exc
        self.issued += 1
        self._store(cache_key(request), token, now)
        return token

    def _store(self, key: CacheKey, token: IssuedToken, now: float) -> None:
        if key not in self._tokens and len(self._tokens) >= self.max_entries:
            for old in [k for k, t in self._tokens.items() if t.expires_on - now <= EXPIRY_MARGIN]:
                del self._tokens[old]
            if len(self._tokens) >= self.max_entries:  # still full: drop the oldest half
                for old in list(self._tokens)[: self.max_entries // 2 + 1]:
                    del self._tokens[old]
        self._tokens[key] = token

    def __len__(self) -> int:
        return len(self._tokens)
