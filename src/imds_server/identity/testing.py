"""``TokenIssuerContract``: the conformance tests of the ``TokenIssuer`` port.

Subclass it once per implementation and implement ``make_issuer(nursery, tmp_path)``
(start whatever the issuer needs in ``nursery``; return the issuer). Every test here
must pass for every issuer: tokens verify with a JWT library against the issuer's own
JWKS and carry the claims clients and resource servers read.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import trio

from ._port import SYSTEM_ASSIGNED, USER_ASSIGNED, Identity, TokenIssuer, TokenRequest

NOW = time.time()  # issuers may use their own clock (a token service does): keep them close
SYSTEM = Identity(SYSTEM_ASSIGNED, "client-sys", "object-sys", "tenant-1",
                  "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/"
                  "virtualMachines/vm")
USER = Identity(USER_ASSIGNED, "client-user", "object-user", "tenant-1",
                "/subscriptions/s/resourceGroups/g/providers/"
                "Microsoft.ManagedIdentity/userAssignedIdentities/app")


async def verify(issuer: TokenIssuer, token: str, audience: str) -> dict[str, Any]:
    """The token's claims, checked against the issuer's JWKS (signature, aud, iss)."""
    header = jwt.get_unverified_header(token)
    keys = jwt.PyJWKSet.from_dict(await issuer.jwks())
    key = next(k for k in keys.keys if k.key_id == header["kid"])
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=["RS256"], audience=audience, issuer=issuer.issuer,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False})
    return claims


class TokenIssuerContract:
    async def make_issuer(self, nursery: trio.Nursery, tmp_path: Path) -> TokenIssuer:
        raise NotImplementedError

    async def test_token_verifies_against_jwks_with_the_claims(
            self, nursery: trio.Nursery, tmp_path: Path) -> None:
        issuer = await self.make_issuer(nursery, tmp_path)
        resource = "https://management.azure.com/"
        token = await issuer.issue(TokenRequest("vm-1", SYSTEM, resource), NOW)
        claims = await verify(issuer, token.access_token, resource)
        assert claims["aud"] == resource
        assert claims["iss"] == issuer.issuer
        assert claims["sub"] == claims["oid"] == SYSTEM.object_id
        assert claims["tid"] == SYSTEM.tenant_id
        assert claims["appid"] == claims["azp"] == SYSTEM.client_id
        assert claims["xms_mirid"] == SYSTEM.resource_id
        assert claims["iat"] == token.issued_at
        assert claims["nbf"] == token.not_before
        assert claims["exp"] == token.expires_on
        assert token.issued_at <= token.not_before < token.expires_on

    async def test_lifetime_lets_clients_refresh_at_half_life(
            self, nursery: trio.Nursery, tmp_path: Path) -> None:
        # MSAL refreshes at half-life only when expires_in >= 7200.
        issuer = await self.make_issuer(nursery, tmp_path)
        token = await issuer.issue(TokenRequest("vm-1", USER, "https://vault.azure.net"), NOW)
        assert token.lifetime >= 7200
        assert abs(token.issued_at - NOW) <= 600

    async def test_audience_is_the_resource_as_asked(
            self, nursery: trio.Nursery, tmp_path: Path) -> None:
        issuer = await self.make_issuer(nursery, tmp_path)
        for resource in ("https://storage.azure.com", "https://storage.azure.com/"):
            token = await issuer.issue(TokenRequest("vm-1", USER, resource), NOW)
            claims = await verify(issuer, token.access_token, resource)
            assert claims["aud"] == resource
            assert claims["oid"] == USER.object_id
            assert claims["xms_mirid"] == USER.resource_id

    async def test_wrong_audience_does_not_verify(
            self, nursery: trio.Nursery, tmp_path: Path) -> None:
        issuer = await self.make_issuer(nursery, tmp_path)
        token = await issuer.issue(TokenRequest("vm-1", SYSTEM, "https://a.example"), NOW)
        try:
            await verify(issuer, token.access_token, "https://b.example")
        except jwt.InvalidAudienceError:
            return
        raise AssertionError("a token for one resource verified for another")

    async def test_concurrent_issues_each_get_a_distinct_token(
            self, nursery: trio.Nursery, tmp_path: Path) -> None:
        issuer = await self.make_issuer(nursery, tmp_path)
        tokens: list[str] = []

        async def one(i: int) -> None:
            token = await issuer.issue(TokenRequest(f"vm-{i}", SYSTEM, "https://r"), NOW)
            tokens.append(token.access_token)

        async with trio.open_nursery() as inner:
            for i in range(8):
                inner.start_soon(one, i)
        assert len(set(tokens)) == 8
        for token in tokens:
            await verify(issuer, token, "https://r")
