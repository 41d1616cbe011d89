"""``LocalIssuer``: the port contract, and where its key comes from."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from imds_replica import ConfigError
from imds_server.identity import LocalIssuer, TokenIssuer
from imds_server.identity.testing import TokenIssuerContract


class TestLocalIssuer(TokenIssuerContract):
    async def make_issuer(self, nursery: trio.Nursery, tmp_path: Path) -> TokenIssuer:
        return LocalIssuer.from_config(key_path=None, key_dir=tmp_path,
                                       issuer="https://issuer.test/identity")


def test_key_is_made_once_private_and_reused(tmp_path: Path) -> None:
    first = LocalIssuer.from_config(key_path=None, key_dir=tmp_path, issuer="i")
    path = tmp_path / "identity" / "signing-key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = LocalIssuer.from_config(key_path=None, key_dir=tmp_path, issuer="i")
    assert again.kid == first.kid  # tokens keep verifying across restarts
    assert again.jwks_document() == first.jwks_document()


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def test_configured_pem_is_used(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "key.pem"
    path.write_bytes(_pem(key))
    issuer = LocalIssuer.from_config(key_path=path, key_dir=tmp_path / "unused", issuer="i")
    expected = LocalIssuer(key, issuer="i")
    assert issuer.kid == expected.kid
    assert not (tmp_path / "unused").exists()


@pytest.mark.parametrize("content", ["not a key", "ec", "small"])
def test_bad_configured_key_is_refused_naming_the_setting(tmp_path: Path,
                                                          content: str) -> None:
    path = tmp_path / "key.pem"
    if content == "ec":
        path.write_bytes(_pem(ec.generate_private_key(ec.SECP256R1())))
    elif content == "small":
        path.write_bytes(_pem(rsa.generate_private_key(public_exponent=65537,
                                                       key_size=1024)))
    else:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        LocalIssuer.from_config(key_path=path, key_dir=None, issuer="i")
    assert info.value.key == "identity-signing-key"


def test_missing_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        LocalIssuer.from_config(key_path=tmp_path / "nope.pem", key_dir=None, issuer="i")


def test_short_lifetime_is_refused() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ConfigError) as info:
        LocalIssuer(key, issuer="i", lifetime=60)
    assert info.value.key == "identity-token-lifetime"
