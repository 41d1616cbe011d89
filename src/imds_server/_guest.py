"""Wiring of the guest surface beyond the instance document into ``Server``: the token
issuer and cache behind ``/metadata/identity``, the attested-document signer, and the
admin routes resource servers and guests' verifiers read (``GET /identity/jwks``,
``GET /identity/.well-known/openid-configuration``, ``GET /attested/ca.pem``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ._admin import AdminHandler, AdminResult
from ._attested import DEMO_DIR, AttestedSigner
from ._config import ServerConfig
from ._pem import key_dir
from ._render import to_json
from ._request import Request, Response, error
from .identity._cache import TokenCache
from .identity._endpoint import IdentityEndpoint, Issue
from .identity._local import LocalIssuer
from .identity._port import IssuerError, TokenIssuer, openid_configuration
from .identity._remote import RemoteIssuer
from .identity._service import JWKS_PATH, OPENID_PATH

if TYPE_CHECKING:
    from ._api import VmApi

CA_PATH = "/attested/ca.pem"


def make_issuer(config: ServerConfig, admin: tuple[str, int]) -> TokenIssuer:
    """The configured issuer; ``admin`` (the bound admin address) names the default iss."""
    host, port = admin[:2]
    default_iss = f"http://{host}:{port}/identity"
    if config.identity_issuer == "remote":
        assert config.identity_token_service is not None
        assert config.identity_token_service_credential is not None
        try:
            credential = config.identity_token_service_credential.read_text().strip()
        except OSError as exc:
            from imds_replica import ConfigError

            raise ConfigError(f"cannot read {config.identity_token_service_credential}: "
                              f"{exc.strerror}",
                              key="identity-token-service-credential") from None
        return RemoteIssuer(config.identity_token_service, credential=credential,
                            issuer=config.identity_issuer_url,
                            ca_file=config.identity_token_service_ca)
    return LocalIssuer.from_config(key_path=config.identity_signing_key,
                                   key_dir=key_dir(config.data_dir),
                                   issuer=config.identity_issuer_url or default_iss,
                                   lifetime=config.identity_token_lifetime)


def make_signer(config: ServerConfig) -> AttestedSigner | None:
    """The configured signer, the demo one with ``--demo``, else None (404)."""
    if config.attested_key is not None and config.attested_cert is not None:
        return AttestedSigner.from_files(config.attested_key, config.attested_cert,
                                         config.attested_ca,
                                         lifetime=config.attested_lifetime)
    if config.demo:
        keys = key_dir(config.data_dir)
        directory = keys / DEMO_DIR if keys is not None else None
        return AttestedSigner.demo(directory, lifetime=config.attested_lifetime)
    return None


def attach_guest_surface(api: VmApi, config: ServerConfig, admin: tuple[str, int]) -> None:
    api.identity.tokens = TokenCache(make_issuer(config, admin))
    api.attested = make_signer(config)


def admin_routes(api: Callable[[], VmApi]) -> dict[str, AdminHandler]:
    """Admin routes over the API's issuer and signer (read when asked: set at start)."""

    async def jwks(request: Request) -> AdminResult:
        tokens = api().identity.tokens
        if tokens is None:
            return error(503, "Starting", route=JWKS_PATH, headers=(("Retry-After", "1"),))
        try:
            return to_json(await tokens.issuer.jwks())
        except IssuerError as exc:
            return error(502, f"token service: {exc}", route=JWKS_PATH)

    async def openid(request: Request) -> AdminResult:
        tokens = api().identity.tokens
        if tokens is None:
            return error(503, "Starting", route=OPENID_PATH, headers=(("Retry-After", "1"),))
        return to_json(openid_configuration(tokens.issuer.issuer))

    async def ca(request: Request) -> AdminResult:
        signer = api().attested
        if signer is None or signer.ca_pem is None:
            return error(404, "No attestation CA configured (attested-ca, or --demo)",
                         route=CA_PATH)
        return Response(200, signer.ca_pem, "application/x-pem-file", route=CA_PATH)

    return {JWKS_PATH: jwks, OPENID_PATH: openid, CA_PATH: ca}


async def answer_issue(endpoint: IdentityEndpoint, issue: Issue,
                       clock: Callable[[], float]) -> Response:
    """Get the token an ``Issue`` asks for, and answer (500 if the issuer failed and no
    usable token is cached)."""
    try:
        try:
            token = await endpoint.obtain(issue, clock())
        except IssuerError as exc:
            return endpoint.answer_issue(issue, None, str(exc), clock())
        return endpoint.answer_issue(issue, token, None, clock())
    finally:
        endpoint.release(issue)
