"""``imds-server token-service``: the reference regional token service.

It wraps a ``LocalIssuer`` behind HTTP so that hosts run a ``RemoteIssuer`` and keep no
signing key. Hosts authenticate with a bearer secret; the credentials file has one host
per line, ``NAME SECRET`` (``#`` comments). With a placement file (``_placement``) a host
gets tokens only for the identities of the VMs placed on it (403 otherwise). Routes:

- ``POST /identity/token``: a token (see ``_remote`` for the wire);
- ``GET /identity/jwks`` and ``GET /identity/.well-known/openid-configuration``: for
  resource servers, as the host's admin listener publishes them;
- ``GET /healthz``.

It runs on the server's own HTTP shell (``Listener``). It serves plain HTTP: put TLS in
front of it (the remote issuer speaks HTTPS, with a CA file and a client certificate).
"""

from __future__ import annotations

import hmac
import json
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import trio

from imds_replica import ConfigError

from .._connection import ConnectionLimits, Listener
from .._http import HttpLimits
from .._render import to_json
from .._request import JSON, Request, Response, error
from ._local import LocalIssuer
from ._placement import PlacementFile
from ._port import Identity, TokenRequest, openid_configuration

JWKS_PATH = "/identity/jwks"
OPENID_PATH = "/identity/.well-known/openid-configuration"
TOKEN_PATH = "/identity/token"


def load_credentials(path: Path) -> dict[str, str]:
    """``NAME SECRET`` per line -> {secret: name}. Raises ``ConfigError`` naming the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key="credentials") from None
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[1]) < 16:
            raise ConfigError(f"{path}:{number}: want 'NAME SECRET' with a secret of at "
                              "least 16 characters", key="credentials")
        out[parts[1]] = parts[0]
    if not out:
        raise ConfigError(f"{path} names no host", key="credentials")
    return out


class TokenServiceApp:
    """The ``App`` the listener calls (see ``_connection.App``)."""

    def __init__(self, issuer: LocalIssuer, credentials: Mapping[str, str], *,
                 clock: Callable[[], float] = time.time,
                 placement: PlacementFile | None = None) -> None:
        self.issuer = issuer
        self.credentials = dict(credentials)
        self.clock = clock
        self.placement = placement
        self.issued = 0
        self.refused = 0
        self.forbidden = 0  # authenticated, but not for that VM or identity

    def _host(self, request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        scheme, _, secret = auth.partition(" ")
        if scheme.lower() != "bearer" or not secret:
            return None
        found = None
        for known, name in self.credentials.items():  # compare every one: constant time
            if hmac.compare_digest(known.encode(), secret.strip().encode()):
                found = name
        return found

    async def respond(self, request: Request, peer: str) -> Response:
        path = request.path
        if path == "/healthz":
            return Response(200, b'{"status":"ok"}', JSON, route=path)
        if path == JWKS_PATH and request.method in ("GET", "HEAD"):
            return Response(200, to_json(self.issuer.jwks_document()), JSON, route=path)
        if path == OPENID_PATH and request.method in ("GET", "HEAD"):
            return Response(200, to_json(openid_configuration(self.issuer.issuer)), JSON,
                            route=path)
        if path != TOKEN_PATH:
            return error(404, "Not found", route=path)
        if request.method != "POST":
            return error(405, f"Method {request.method} not allowed", route=path,
                         headers=(("Allow", "POST"),))
        host = self._host(request)
        if host is None:
            self.refused += 1
            return error(401, "host credential missing or unknown", route=path,
                         headers=(("WWW-Authenticate", "Bearer"),))
        try:
            body = json.loads(request.body)
            if not isinstance(body, dict):
                raise ValueError("body must be an object")
            vm, resource = body.get("vm"), body.get("resource")
            if not isinstance(vm, str) or not vm or not isinstance(resource, str) \
                    or not resource:
                raise ValueError("vm and resource must be non-empty strings")
            identity = Identity.from_dict(body.get("identity"))
        except (ValueError, UnicodeDecodeError) as exc:
            return error(400, f"bad token request: {exc}", route=path)
        if self.placement is not None:
            reason = self.placement.current().refusal(host, vm, identity)
            if reason is not None:
                self.forbidden += 1
                return error(403, reason, route=path)
        token = self.issuer.sign(TokenRequest(vm, identity, resource), self.clock())
        self.issued += 1
        answer = {"access_token": token.access_token, "issued_at": token.issued_at,
                  "not_before": token.not_before, "expires_on": token.expires_on,
                  "host": host}
        return Response(200, to_json(answer), JSON, (("Cache-Control", "no-store"),),
                        route=path)

    def answered(self, request: Request, peer: str, response: Response, received: float,
                 sent: int, seconds: float) -> None:
        pass


async def serve_token_service(sock: socket.socket, app: TokenServiceApp, *,
                              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                              ) -> None:
    """Serve ``app`` on the listening ``sock`` until cancelled (then ``sock`` is closed)."""
    listener = Listener(sock, app, http=HttpLimits(), limits=ConnectionLimits())
    try:
        await listener.serve(task_status=task_status)
    finally:
        sock.close()
