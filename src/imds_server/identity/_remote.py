"""``RemoteIssuer``: asks a regional token service (``imds-server token-service``) over
HTTP(S), so a fleet need not keep signing keys on every host.

The host authenticates with its credential (a bearer secret from a file, and for HTTPS
optionally a client certificate); the service answers the token and its times. Every
failure (unreachable, timeout, refused, malformed answer) is an ``IssuerError``: the
token endpoint then serves a cached token if it has a usable one, else 500.

Wire (ours): ``POST {url}/identity/token`` with ``{"vm", "resource", "identity":
{kind, clientId, objectId, tenantId, resourceId}}`` -> ``{"access_token", "issued_at",
"not_before", "expires_on"}``; ``GET {url}/identity/jwks``.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import trio

from imds_replica import ConfigError

from ._port import IssuedToken, IssuerError, TokenRequest

JWKS_TTL = 300.0  # seconds a fetched JWKS is reused for GET /identity/jwks


class RemoteIssuer:
    """A ``TokenIssuer`` over a token service at ``url`` (``http://`` or ``https://``)."""

    def __init__(self, url: str, *, credential: str, issuer: str | None = None,
                 ca_file: Path | None = None, client_cert: Path | None = None,
                 client_key: Path | None = None, timeout: float = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError("must be an http:// or https:// URL",
                              key="identity-token-service")
        self.url = url.rstrip("/")
        self._issuer = issuer or f"{self.url}/identity"
        verify: ssl.SSLContext | bool = True
        if ca_file is not None or client_cert is not None:
            verify = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            if client_cert is not None:
                verify.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
        # A client per call, not a pool: tokens are asked for once per half-life per
        # (VM, identity, resource), and nothing is left open when the server stops.
        self._client_args: dict[str, Any] = {
            "timeout": timeout, "verify": verify, "transport": transport,
            "headers": {"Authorization": f"Bearer {credential}"}}
        self._jwks: tuple[float, dict[str, Any]] | None = None

    @property
    def issuer(self) -> str:
        return self._issuer

    async def issue(self, request: TokenRequest, now: float) -> IssuedToken:
        body = {"vm": request.vm, "resource": request.resource,
                "identity": request.identity.to_dict()}
        answer = await self._call("POST", "/identity/token", body)
        try:
            return IssuedToken(str(answer["access_token"]), int(answer["issued_at"]),
                               int(answer["not_before"]), int(answer["expires_on"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise IssuerError(f"token service answered a malformed token: {exc}") from None

    async def jwks(self) -> dict[str, Any]:
        now = trio.current_time()
        if self._jwks is not None and now - self._jwks[0] < JWKS_TTL:
            return self._jwks[1]
        answer = await self._call("GET", "/identity/jwks", None)
        if not isinstance(answer.get("keys"), list):
            raise IssuerError("token service answered a JWKS without keys")
        self._jwks = (now, answer)
        return answer

    async def _call(self, method: str, path: str, body: Any) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(**self._client_args) as client:
                resp = await client.request(method, self.url + path, json=body)
        except httpx.HTTPError as exc:
            raise IssuerError(f"token service {self.url} unreachable: "
                              f"{type(exc).__name__}: {exc}") from None
        if resp.status_code != 200:
            raise IssuerError(f"token service {self.url} answered {resp.status_code}: "
                              f"{resp.text[:200]}")
        try:
            answer = resp.json()
        except ValueError:
            raise IssuerError(f"token service {self.url} answered non-JSON") from None
        if not isinstance(answer, dict):
            raise IssuerError(f"token service {self.url} answered a non-object")
        return answer
