"""Managed identity: the ``TokenIssuer`` port, its local and remote issuers, the token
cache, the VM-facing endpoint and the reference regional token service.

See docs/server.md ("Managed identity") for the endpoints, register layout and settings.
"""

from ._cache import TokenCache, TokenCacheStatistics, cache_key
from ._endpoint import (
    IdentityEndpoint,
    IdentityPolicy,
    IdentityStatistics,
    Issue,
    read_identities,
    token_body,
)
from ._local import LocalIssuer, public_jwk
from ._placement import Placement, PlacementFile
from ._port import (
    SYSTEM_ASSIGNED,
    USER_ASSIGNED,
    Identity,
    IssuedToken,
    IssuerError,
    TokenIssuer,
    TokenRequest,
    openid_configuration,
)
from ._remote import RemoteIssuer
from ._service import TokenServiceApp, load_credentials, serve_token_service

__all__ = [
    "SYSTEM_ASSIGNED",
    "USER_ASSIGNED",
    "Identity",
    "IdentityEndpoint",
    "IdentityPolicy",
    "IdentityStatistics",
    "Issue",
    "IssuedToken",
    "IssuerError",
    "LocalIssuer",
    "Placement",
    "PlacementFile",
    "RemoteIssuer",
    "TokenCache",
    "TokenCacheStatistics",
    "TokenIssuer",
    "TokenRequest",
    "TokenServiceApp",
    "cache_key",
    "load_credentials",
    "openid_configuration",
    "public_jwk",
    "read_identities",
    "serve_token_service",
    "token_body",
]
