"""The identity endpoints of a running server, over real sockets: issuer failures, the
identity limits, the admin listener's JWKS and OpenID configuration, and the remote issuer
through a real ``imds-server token-service`` process."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from imds_server import ServerConfig
from imds_server.identity import TokenCache
from imds_server.identity.testing import verify

from ..conftest import CALLER_A, CALLER_B, VM_A, get, make_config, running, wait_until
from .conftest import RESOURCE, SYSTEM, TOKEN, USER1, USER1_ID, FakeIssuer, identity_fleet

pytestmark = pytest.mark.integration


async def test_failing_issuer_answers_500_and_cached_tokens_are_still_served() -> None:
    async with running(make_config(), seed=identity_fleet()) as server:
        issuer = FakeIssuer()
        server.api.identity.tokens = TokenCache(issuer)
        issuer.failing = True
        failed = await get(server.vm_address, f"{TOKEN}&resource={RESOURCE}")
        assert failed.status == 500
        assert failed.json()["error"] == "unknown_error"
        assert "retry-after" not in failed.headers
        issuer.failing = False
        good = await get(server.vm_address, f"{TOKEN}&resource={RESOURCE}")
        assert good.status == 200
        issuer.failing = True
        again = await get(server.vm_address, f"{TOKEN}&resource={RESOURCE}")
        assert again.status == 200
        assert again.json()["access_token"] == good.json()["access_token"]
        assert issuer.calls == 2  # the cached token did not ask the issuer


async def test_concurrency_limit_answers_429_over_sockets() -> None:
    config = make_config(identity_max_concurrent=2, identity_rate_limit=0)
    async with running(config, seed=identity_fleet()) as server:
        issuer = FakeIssuer()
        issuer.gate = trio.Event()
        server.api.identity.tokens = TokenCache(issuer)
        statuses: list[int] = []

        async def one(i: int) -> None:
            reply = await get(server.vm_address, f"{TOKEN}&resource=https://r{i}")
            statuses.append(reply.status)
            if reply.status == 429:
                assert reply.json()["error_description"] == \
                    "Temporarily throttled, too many requests"
                assert reply.headers["retry-after"] == "1"

        async with trio.open_nursery() as nursery:
            for i in range(2):
                nursery.start_soon(one, i)
            await wait_until(lambda: issuer.calls == 2)
            await one(9)  # a third in flight for the same VM
            assert statuses == [429]
            other = await get(server.vm_address, f"{TOKEN}&resource={RESOURCE}",
                              source=CALLER_B)
            assert other.status == 400  # limits are per VM (B has no identity)
            issuer.gate.set()
        assert sorted(statuses) == [200, 200, 429]


async def test_rate_limit_over_sockets() -> None:
    config = make_config(identity_rate_limit=3, identity_max_concurrent=0)
    async with running(config, seed=identity_fleet()) as server:
        got = [(await get(server.vm_address, f"{TOKEN}&resource={RESOURCE}")).status
               for _ in range(4)]
        assert got == [200, 200, 200, 429]


async def test_admin_publishes_jwks_and_openid_configuration() -> None:
    async with running(make_config(), seed=identity_fleet()) as server:
        token = (await get(server.vm_address, f"{TOKEN}&resource={RESOURCE}")).json()
        host, port = server.admin_address[:2]
        async with httpx.AsyncClient() as client:
            config = (await client.get(
                f"http://{host}:{port}/identity/.well-known/openid-configuration")).json()
            jwks = (await client.get(f"http://{host}:{port}/identity/jwks")).json()
        assert config["issuer"] == f"http://{host}:{port}/identity"
        assert config["jwks_uri"] == f"http://{host}:{port}/identity/jwks"
        assert [k["kty"] for k in jwks["keys"]] == ["RSA"]
        tokens = server.api.identity.tokens
        assert tokens is not None
        claims = await verify(tokens.issuer, token["access_token"], RESOURCE)
        assert claims["oid"] == SYSTEM["objectId"]


async def test_vm_facing_listener_does_not_serve_the_admin_identity_routes() -> None:
    async with running(make_config(), seed=identity_fleet()) as server:
        reply = await get(server.vm_address, "/identity/jwks", source=CALLER_A)
        assert reply.status == 404


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def token_service(tmp_path: Path, *extra: str) -> AsyncIterator[tuple[str, ServerConfig]]:
    """A real ``imds-server token-service`` process knowing ``host-1``, and the config of a
    server that asks it as ``host-1``."""
    secret = "host-secret-for-the-test-0001"
    (tmp_path / "hosts").write_text(f"host-1 {secret}\n")
    (tmp_path / "credential").write_text(secret + "\n")
    port = _free_port()
    service = await trio.lowlevel.open_process(
        [sys.executable, "-m", "imds_server", "token-service", "--listen",
         f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "service"),
         "--credentials", str(tmp_path / "hosts"), *extra])
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(500):
                try:
                    if (await client.get(f"{url}/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    await trio.sleep(0.02)
        yield url, make_config(identity_issuer="remote", identity_token_service=url,
                               identity_token_service_credential=tmp_path / "credential")
    finally:
        service.terminate()
        await service.wait()


async def test_remote_issuer_through_a_token_service_process(tmp_path: Path) -> None:
    async with token_service(tmp_path) as (url, config), httpx.AsyncClient() as client:
        async with running(config, seed=identity_fleet()) as server:
            reply = await get(server.vm_address, f"{TOKEN}&resource={RESOURCE}")
            assert reply.status == 200, reply.body
            host, aport = server.admin_address[:2]
            host_jwks = (await client.get(f"http://{host}:{aport}/identity/jwks")).json()
        service_jwks = (await client.get(f"{url}/identity/jwks")).json()
    assert host_jwks == service_jwks
    assert (tmp_path / "service" / "identity" / "signing-key.pem").exists()
    import jwt

    token = reply.json()["access_token"]
    key = jwt.PyJWKSet.from_dict(service_jwks).keys[0].key
    claims = jwt.decode(token, key, algorithms=["RS256"], audience=RESOURCE,
                        issuer=f"{url}/identity")
    assert claims["oid"] == SYSTEM["objectId"]
    assert json.loads(reply.body)["resource"] == RESOURCE


async def test_token_service_placement_limits_a_host_to_its_vms_identities(
        tmp_path: Path) -> None:
    user1 = {"kind": "userAssigned", **USER1, "resourceId": USER1_ID}
    (tmp_path / "placement.json").write_text(json.dumps({"host-1": {VM_A: [user1]}}))
    async with token_service(tmp_path, "--placement", str(tmp_path / "placement.json")) as (
            _url, config), running(config, seed=identity_fleet()) as server:
        listed = await get(server.vm_address,
                           f"{TOKEN}&resource={RESOURCE}&msi_res_id={USER1_ID}")
        assert listed.status == 200, listed.body
        import jwt

        claims = jwt.decode(listed.json()["access_token"], options={"verify_signature": False})
        assert (claims["appid"], claims["xms_mirid"]) == (USER1["clientId"], USER1_ID)
        # The system identity is real on this VM, but the placement does not list it.
        unlisted = await get(server.vm_address, f"{TOKEN}&resource={RESOURCE}")
        assert unlisted.status == 500
        assert unlisted.json()["error"] == "unknown_error"
