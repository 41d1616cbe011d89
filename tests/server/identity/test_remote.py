"""``RemoteIssuer`` against the reference token service (``imds-server token-service``):
the port contract over real sockets, host credentials, and failures as ``IssuerError``."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest
import trio

from imds_replica import ConfigError
from imds_server.identity import (
    IssuerError,
    LocalIssuer,
    RemoteIssuer,
    TokenIssuer,
    TokenRequest,
    TokenServiceApp,
    load_credentials,
    serve_token_service,
)
from imds_server.identity.testing import SYSTEM, TokenIssuerContract, verify

SECRET = "host-secret-0123456789"


async def start_service(nursery: trio.Nursery, key_dir: Path) -> tuple[str, LocalIssuer]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    host, port = sock.getsockname()
    url = f"http://{host}:{port}"
    local = LocalIssuer.from_config(key_path=None, key_dir=key_dir, issuer=f"{url}/identity")
    app = TokenServiceApp(local, {SECRET: "host-1"})
    await nursery.start(serve_token_service, sock, app)
    return url, local


class TestRemoteIssuer(TokenIssuerContract):
    async def make_issuer(self, nursery: trio.Nursery, tmp_path: Path) -> TokenIssuer:
        url, _ = await start_service(nursery, tmp_path)
        return RemoteIssuer(url, credential=SECRET)


async def test_remote_tokens_verify_against_the_service_jwks(nursery: trio.Nursery,
                                                            tmp_path: Path) -> None:
    url, local = await start_service(nursery, tmp_path)
    remote = RemoteIssuer(url, credential=SECRET)
    token = await remote.issue(TokenRequest("vm", SYSTEM, "https://r"), 1_800_000_000.0)
    assert await remote.jwks() == local.jwks_document()
    assert remote.issuer == local.issuer
    async with httpx.AsyncClient() as client:
        jwks = (await client.get(f"{url}/identity/jwks")).json()
        openid = (await client.get(f"{url}/identity/.well-known/openid-configuration")).json()
    assert jwks == local.jwks_document()
    assert openid["issuer"] == local.issuer
    assert openid["jwks_uri"] == f"{url}/identity/jwks"
    assert (await verify(local, token.access_token, "https://r"))["oid"] == SYSTEM.object_id


async def test_unknown_host_credential_is_refused(nursery: trio.Nursery,
                                                  tmp_path: Path) -> None:
    url, _ = await start_service(nursery, tmp_path)
    with pytest.raises(IssuerError, match="401"):
        await RemoteIssuer(url, credential="wrong-secret-000000").issue(
            TokenRequest("vm", SYSTEM, "https://r"), 0.0)


async def test_malformed_token_request_is_400(nursery: trio.Nursery, tmp_path: Path) -> None:
    url, _ = await start_service(nursery, tmp_path)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {SECRET}"}) as client:
        for body in (b"[]", b"{", json.dumps({"vm": "v", "resource": "r",
                                              "identity": {"kind": "nope"}}).encode()):
            resp = await client.post(f"{url}/identity/token", content=body)
            assert resp.status_code == 400, body


async def test_unreachable_service_is_an_issuer_error() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there
    with pytest.raises(IssuerError, match="unreachable"):
        await RemoteIssuer(f"http://127.0.0.1:{port}", credential=SECRET).issue(
            TokenRequest("vm", SYSTEM, "https://r"), 0.0)


def test_url_must_be_http(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        RemoteIssuer("ftp://x", credential=SECRET)
    assert info.value.key == "identity-token-service"


def test_credentials_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("# hosts\nhost-1 " + SECRET + "\n\nhost-2 another-secret-1234567\n")
    assert load_credentials(path) == {SECRET: "host-1", "another-secret-1234567": "host-2"}
    path.write_text("host-1 short\n")
    with pytest.raises(ConfigError, match=":1: want"):
        load_credentials(path)
    path.write_text("# nobody\n")
    with pytest.raises(ConfigError, match="names no host"):
        load_credentials(path)
