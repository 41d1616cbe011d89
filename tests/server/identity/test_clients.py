"""Unmodified azure-identity against a real server on real sockets: tokens for the
system- and user-assigned identities (sync and async credentials) that verify against the
admin listener's JWKS, and ``DefaultAzureCredential`` on a VM without an identity moving
on at once (one request, no retries) instead of after ~24 s of retries."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
import pytest
import trio

from imds_replica import Event
from imds_server import Server

from ..conftest import VM_A, VM_B, make_config, running
from .conftest import SYSTEM, USER1, identity_fleet

pytestmark = pytest.mark.integration
RESOURCE = "https://management.azure.com"
SCOPE = f"{RESOURCE}/.default"
ENV = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT",
       "MSI_SECRET", "IMDS_ENDPOINT", "AZURE_CLIENT_ID", "AZURE_TENANT_ID",
       "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_USERNAME",
       "AZURE_PASSWORD", "AZURE_AUTHORITY_HOST", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
       "https_proxy")


def fleet(loopback_vm: str) -> list[Event]:
    """The identity fleet, with 127.0.0.1 (where the SDK connects from) as ``loopback_vm``."""
    return [*identity_fleet(), Event("hostnet", ("callers", "127.0.0.1"), 1, loopback_vm)]


@pytest.fixture
def point_sdk(monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

    def at(server: Server) -> None:
        host, port = server.vm_address[:2]
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", f"http://{host}:{port}")

    return at


async def verify_with_admin_jwks(server: Server, token: str, audience: str) -> dict[str, Any]:
    host, port = server.admin_address[:2]
    async with httpx.AsyncClient() as client:
        config = (await client.get(
            f"http://{host}:{port}/identity/.well-known/openid-configuration")).json()
        jwks = (await client.get(config["jwks_uri"])).json()
    header = jwt.get_unverified_header(token)
    key = next(k for k in jwt.PyJWKSet.from_dict(jwks).keys if k.key_id == header["kid"])
    claims: dict[str, Any] = jwt.decode(token, key.key, algorithms=["RS256"],
                                        audience=audience, issuer=config["issuer"])
    return claims


def _sync_token(client_id: str | None) -> Any:
    from azure.identity import ManagedIdentityCredential

    credential = ManagedIdentityCredential(client_id=client_id) if client_id \
        else ManagedIdentityCredential()
    with credential:
        return credential.get_token(SCOPE)


def _async_token(client_id: str | None) -> Any:
    from azure.core.pipeline.transport import AsyncioRequestsTransport
    from azure.identity.aio import ManagedIdentityCredential

    async def main() -> Any:
        kwargs: dict[str, Any] = {"transport": AsyncioRequestsTransport()}
        if client_id:
            kwargs["client_id"] = client_id
        async with ManagedIdentityCredential(**kwargs) as credential:
            return await credential.get_token(SCOPE)

    return asyncio.run(main())


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("which", ["system", "user"])
async def test_managed_identity_credential_gets_verifiable_tokens(
        point_sdk: Any, flavour: str, which: str) -> None:
    async with running(make_config(), seed=fleet(VM_A)) as server:
        point_sdk(server)
        client_id = USER1["clientId"] if which == "user" else None
        fetch = _sync_token if flavour == "sync" else _async_token
        token = await trio.to_thread.run_sync(fetch, client_id)
        assert token.expires_on > time.time() + 3600
        # azure-identity turns the scope into resource=https://management.azure.com
        claims = await verify_with_admin_jwks(server, token.token, RESOURCE)
        expected = USER1 if which == "user" else SYSTEM
        assert claims["oid"] == expected["objectId"]
        assert claims["appid"] == expected["clientId"]
        assert claims["tid"] == expected["tenantId"]


async def test_default_credential_on_a_vm_without_identity_fails_over_at_once(
        point_sdk: Any) -> None:
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import DefaultAzureCredential

    async with running(make_config(), seed=fleet(VM_B)) as server:
        point_sdk(server)
        # Only the environment and managed-identity credentials: the others start
        # developer tools (az, pwsh, azd) that are not what this test measures.
        credential = DefaultAzureCredential(
            exclude_cli_credential=True, exclude_powershell_credential=True,
            exclude_developer_cli_credential=True, exclude_shared_token_cache_credential=True,
            exclude_visual_studio_code_credential=True, exclude_workload_identity_credential=True,
            exclude_interactive_browser_credential=True)
        before = server.api.identity.stats.requests

        def attempt() -> float:
            start = time.perf_counter()
            with pytest.raises(ClientAuthenticationError, match="Identity not found"):
                credential.get_token(SCOPE)
            return time.perf_counter() - start

        elapsed = await trio.to_thread.run_sync(attempt)
        credential.close()
        # One request and no retry: a 404 here would be retried five times (~24 s).
        assert server.api.identity.stats.requests - before == 1
        assert server.api.identity.stats.not_found == 1
        assert elapsed < 5.0, elapsed  # generous on a shared machine; typically ~0.05 s
