"""The ``TokenIssuer`` port: what the token endpoint asks of whoever signs tokens.

An issuer is given a ``TokenRequest`` (which VM, which of its identities, which resource)
and ``now``, and returns an ``IssuedToken`` or raises ``IssuerError`` (our fault: the
endpoint answers 500, which every client retries, and keeps serving cached tokens). It
also publishes its public keys (``jwks``) so that resource servers can verify tokens, and
names itself (``issuer``: the ``iss`` claim and the OpenID configuration's issuer).

Implementations: ``LocalIssuer`` (signs here) and ``RemoteIssuer`` (asks a regional token
service over HTTP(S)); ``imds_server.identity.testing.TokenIssuerContract`` is the test
class every implementation's tests subclass.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs

SYSTEM_ASSIGNED = "systemAssigned"
USER_ASSIGNED = "userAssigned"


@attrs.frozen
class Identity:
    """One managed identity of a VM, as replicated under ``("vms", VM, "identity", ...)``.

    ``resource_id`` is the identity's ARM id (``msi_res_id``; the ``xms_mirid`` claim):
    for a user-assigned identity its register's key, for the system-assigned one the
    VM's own resource id."""

    kind: str = attrs.field(validator=attrs.validators.in_((SYSTEM_ASSIGNED, USER_ASSIGNED)))
    client_id: str
    object_id: str
    tenant_id: str
    resource_id: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "clientId": self.client_id, "objectId": self.object_id,
                "tenantId": self.tenant_id, "resourceId": self.resource_id}

    @classmethod
    def from_dict(cls, value: Any) -> Identity:
        """The inverse of ``to_dict``; raises ``ValueError`` naming what is wrong."""
        if not isinstance(value, dict):
            raise ValueError("identity must be an object")
        fields = {}
        for name in ("kind", "clientId", "objectId", "tenantId", "resourceId"):
            item = value.get(name, "" if name == "resourceId" else None)
            if not isinstance(item, str):
                raise ValueError(f"identity.{name} must be a string")
            fields[name] = item
        return cls(fields["kind"], fields["clientId"], fields["objectId"],
                   fields["tenantId"], fields["resourceId"])


@attrs.frozen
class TokenRequest:
    """A token for ``identity`` of ``vm``, with audience ``resource`` (as the guest sent it:
    clients send it with and without a trailing slash, and ``aud`` is what they asked)."""

    vm: str
    identity: Identity
    resource: str


@attrs.frozen
class IssuedToken:
    """A signed access token and its times (whole epoch seconds)."""

    access_token: str
    issued_at: int
    not_before: int
    expires_on: int

    def __attrs_post_init__(self) -> None:
        if not self.issued_at <= self.expires_on or not self.access_token:
            raise ValueError("a token needs an access_token and issued_at <= expires_on")

    @property
    def lifetime(self) -> int:
        return self.expires_on - self.issued_at

    def refresh_at(self) -> float:
        """When a cache should get a new one: after half the lifetime (as MSAL does)."""
        return self.issued_at + self.lifetime / 2


class IssuerError(Exception):
    """The issuer could not issue a token (unreachable, refused, misconfigured): ours, 500."""


class TokenIssuer(Protocol):
    """The port. ``issue`` may be called concurrently; ``jwks`` returns a JWK Set."""

    @property
    def issuer(self) -> str: ...

    async def issue(self, request: TokenRequest, now: float) -> IssuedToken: ...

    async def jwks(self) -> dict[str, Any]: ...


def openid_configuration(issuer: str) -> dict[str, Any]:
    """The OpenID Provider metadata resource servers read (``jwks_uri`` beside it)."""
    base = issuer.rstrip("/")
    return {"issuer": issuer, "jwks_uri": f"{base}/jwks",
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["token"], "subject_types_supported": ["public"],
            "claims_supported": ["aud", "iss", "sub", "oid", "tid", "appid", "azp",
                                 "xms_mirid", "iat", "nbf", "exp"]}
