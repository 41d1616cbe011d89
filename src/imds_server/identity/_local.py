"""``LocalIssuer``: signs RS256 JWTs here, with a key from a PEM file.

The key is either configured (``identity-signing-key``, a PEM path) or kept beside the
data directory (``DATA.keys/identity/signing-key.pem``, made on first start, mode 0600; the
log directory itself holds only the log), so tokens verify against the same JWKS across
restarts. Claims follow what Azure's managed-identity tokens
carry and what clients read: ``aud`` (the resource), ``iss``, ``sub``/``oid`` (objectId),
``tid``, ``appid``/``azp`` (clientId), ``xms_mirid`` (the identity's resource id),
``iat``/``nbf``/``exp``, plus a unique ``uti``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from imds_replica import ConfigError

from .._pem import write_private_pem
from ._port import IssuedToken, TokenRequest

DEFAULT_LIFETIME = 24 * 3600  # as Azure's managed-identity tokens; clients refresh at half
KEY_FILE = Path("identity") / "signing-key.pem"


class LocalIssuer:
    """A ``TokenIssuer`` that signs with ``key`` (RSA, >= 2048 bits)."""

    def __init__(self, key: rsa.RSAPrivateKey, *, issuer: str,
                 lifetime: int = DEFAULT_LIFETIME) -> None:
        if key.key_size < 2048:
            raise ConfigError(f"RSA key of {key.key_size} bits: need >= 2048",
                              key="identity-signing-key")
        if lifetime < 600:
            raise ConfigError("must be >= 600 seconds", key="identity-token-lifetime")
        self._key = key
        self._issuer = issuer
        self.lifetime = lifetime
        self._jwk = public_jwk(key.public_key())
        self.kid = self._jwk["kid"]

    @property
    def issuer(self) -> str:
        return self._issuer

    def sign(self, request: TokenRequest, now: float) -> IssuedToken:
        """The token, synchronously (an RS256 signature costs about a millisecond)."""
        iat = int(now)
        exp = iat + self.lifetime
        ident = request.identity
        claims: dict[str, Any] = {
            "aud": request.resource, "iss": self._issuer, "iat": iat, "nbf": iat, "exp": exp,
            "sub": ident.object_id, "oid": ident.object_id, "tid": ident.tenant_id,
            "appid": ident.client_id, "azp": ident.client_id, "appidacr": "2",
            "idtyp": "app", "xms_mirid": ident.resource_id, "ver": "1.0",
            "uti": secrets.token_urlsafe(16),
        }
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})
        return IssuedToken(token, iat, iat, exp)

    async def issue(self, request: TokenRequest, now: float) -> IssuedToken:
        return self.sign(request, now)

    def jwks_document(self) -> dict[str, Any]:
        return {"keys": [dict(self._jwk)]}

    async def jwks(self) -> dict[str, Any]:
        return self.jwks_document()

    @classmethod
    def from_config(cls, *, key_path: Path | None, key_dir: Path | None, issuer: str,
                    lifetime: int = DEFAULT_LIFETIME) -> LocalIssuer:
        """The configured key, else the one in ``key_dir`` (made once), else (no data
        directory: tests, in-memory logs) a key that lives as long as this process."""
        if key_path is not None:
            key = load_key(key_path)
        elif key_dir is not None:
            key = key_in(key_dir / KEY_FILE)
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(key, issuer=issuer, lifetime=lifetime)


def public_jwk(public: rsa.RSAPublicKey) -> dict[str, str]:
    """The public key as a JWK with ``kid`` = its RFC 7638 thumbprint."""
    jwk: dict[str, str] = RSAAlgorithm.to_jwk(public, as_dict=True)
    core = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"),
                      sort_keys=True).encode()
    kid = base64.urlsafe_b64encode(hashlib.sha256(core).digest()).rstrip(b"=").decode()
    return {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": jwk["n"], "e": jwk["e"]}


def load_key(path: Path) -> rsa.RSAPrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}",
                          key="identity-signing-key") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key: {exc}",
                          key="identity-signing-key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{path} is not an RSA key (RS256 needs one)",
                          key="identity-signing-key")
    return key


def key_in(path: Path) -> rsa.RSAPrivateKey:
    """The key at ``path``, made (0600, written whole, then renamed) if absent."""
    if path.exists():
        return load_key(path)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_private_pem(path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return key
