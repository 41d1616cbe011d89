"""``TokenCache``: per (VM, identity, resource); reissued after half-life; a failing
issuer is covered by usable cached tokens; one issue per key at a time."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from imds_server.identity import Identity, IssuerError, TokenCache, TokenRequest

from .conftest import FakeIssuer

NOW = 1_800_000_000.0
IDENT = Identity("systemAssigned", "c", "o", "t", "/rid")


def req(resource: str = "https://r", vm: str = "vm") -> TokenRequest:
    return TokenRequest(vm, IDENT, resource)


async def test_fresh_token_is_reused_until_half_life_then_reissued() -> None:
    issuer = FakeIssuer(lifetime=7200)
    cache = TokenCache(issuer)
    first = await cache.obtain(req(), NOW)
    assert (await cache.obtain(req(), NOW + 3599)) is first
    assert issuer.calls == 1
    second = await cache.obtain(req(), NOW + 3600)  # half of 7200 s
    assert second is not first
    assert issuer.calls == 2
    assert cache.statistics().hits == 1


async def test_keys_are_vm_identity_and_resource_as_asked() -> None:
    issuer = FakeIssuer()
    cache = TokenCache(issuer)
    for request in (req("https://r"), req("https://r/"), req(vm="other"),
                    TokenRequest("vm", Identity("userAssigned", "c2", "o2", "t", "/u"),
                                 "https://r")):
        await cache.obtain(request, NOW)
    assert issuer.calls == 4
    assert len(cache) == 4


async def test_failing_issuer_serves_a_usable_cached_token() -> None:
    issuer = FakeIssuer(lifetime=7200)
    cache = TokenCache(issuer)
    first = await cache.obtain(req(), NOW)
    issuer.failing = True
    # Past half-life the cache asks again; the issuer fails; the old token still has
    # more than five minutes: it is served.
    assert (await cache.obtain(req(), NOW + 5000)) is first
    assert cache.statistics().served_stale == 1
    assert cache.statistics().failures == 1
    # Less than five minutes left: not handed out; the failure surfaces.
    with pytest.raises(IssuerError, match="issuer down"):
        await cache.obtain(req(), NOW + 7200 - 299)


async def test_failing_issuer_without_a_cached_token_raises() -> None:
    issuer = FakeIssuer()
    issuer.failing = True
    with pytest.raises(IssuerError):
        await TokenCache(issuer).obtain(req(), NOW)


async def test_unexpected_issuer_exception_becomes_issuer_error() -> None:
    class Broken(FakeIssuer):
        async def issue(self, request: TokenRequest, now: float):  # type: ignore[no-untyped-def]
            raise RuntimeError("bug")

    with pytest.raises(IssuerError, match="RuntimeError: bug"):
        await TokenCache(Broken()).obtain(req(), NOW)


async def test_concurrent_requests_for_one_key_share_one_issue() -> None:
    issuer = FakeIssuer()
    issuer.gate = trio.Event()
    cache = TokenCache(issuer)
    got = []

    async def one() -> None:
        got.append(await cache.obtain(req(), NOW))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()
        issuer.gate.set()
    assert issuer.calls == 1
    assert len({id(t) for t in got}) == 1


async def test_cache_is_bounded() -> None:
    cache = TokenCache(FakeIssuer(), max_entries=4)
    for i in range(10):
        await cache.obtain(req(f"https://r{i}"), NOW)
    assert len(cache) <= 4
