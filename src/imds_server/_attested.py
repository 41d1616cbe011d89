"""The attested document (``GET /metadata/attested/document``): signed JSON about the VM.

The answer is ``{"encoding": "pkcs7", "signature": BASE64}``: a PKCS#7 SignedData over the
compact JSON, content attached, exactly one certificate (the leaf), no signed attributes,
RSA with SHA-256 — what ``openssl smime -sign -binary -nodetach -noattr -md sha256``
makes, so guests verify it with ``openssl smime -verify -inform DER`` against a CA they
trust. Signing is ``cryptography``'s; nothing here writes ASN.1.

Signed fields: ``nonce`` (the request's, 1-32 ASCII letters and digits, echoed exactly;
else ``YYYYMMDD-HHMMSS`` UTC), ``plan``, ``timeStamp {createdOn, expiresOn}``
(``MM/DD/YY HH:MM:SS -0000``; ``attested-lifetime`` apart, default 6 h), ``vmId``;
``subscriptionId`` from 2019-04-30, ``sku`` from 2019-11-01, ``licenseType`` from
2020-09-01 when the VM has one. Key and certificate come from the configuration
(``attested-key``/``attested-cert``); ``--demo`` makes a throwaway CA and leaf beside the
data directory (``DATA.keys/attested/``), and the admin listener serves the CA at
``GET /attested/ca.pem``.
"""

from __future__ import annotations

import base64
import datetime
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from imds_replica import ConfigError

from ._pem import write_private_pem

SINCE = "2018-10-01"
NONCE_RULE = "nonce must be 1 to 32 ASCII letters and digits"
_NONCE = re.compile(r"[A-Za-z0-9]{1,32}")
DEFAULT_LIFETIME = 6 * 3600
DEMO_DIR = Path("attested")
#: Signed field -> version that introduced it (the others date from ``SINCE``).
FIELDS_SINCE: Mapping[str, str] = {"subscriptionId": "2019-04-30", "sku": "2019-11-01",
                                   "licenseType": "2020-09-01"}


def nonce_error(nonce: str | None) -> str | None:
    """Why a requested nonce is refused, or None when it is fine (or absent)."""
    if nonce is None or _NONCE.fullmatch(nonce):
        return None
    return NONCE_RULE


def _stamp(when: datetime.datetime) -> str:
    return when.strftime("%m/%d/%y %H:%M:%S -0000")


def signed_content(compute: Mapping[str, Any], version: str, nonce: str | None, now: float,
                   lifetime: int = DEFAULT_LIFETIME) -> bytes:
    """The compact JSON that gets signed."""
    created = datetime.datetime.fromtimestamp(int(now), datetime.UTC)
    plan = compute.get("plan")
    plan = plan if isinstance(plan, Mapping) else {}
    doc: dict[str, Any] = {
        "nonce": nonce if nonce is not None else created.strftime("%Y%m%d-%H%M%S"),
        "plan": {k: _text(plan.get(k)) for k in ("name", "product", "publisher")},
        "timeStamp": {"createdOn": _stamp(created),
                      "expiresOn": _stamp(created + datetime.timedelta(seconds=lifetime))},
        "vmId": _text(compute.get("vmId")),
    }
    for name, since in FIELDS_SINCE.items():
        value = _text(compute.get(name))
        if version >= since and (value or name != "licenseType"):
            doc[name] = value
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else str(value)


class AttestedSigner:
    """Signs attested documents with ``key`` and its certificate ``cert``."""

    def __init__(self, key: rsa.RSAPrivateKey, cert: x509.Certificate, *,
                 ca_pem: bytes | None = None, lifetime: int = DEFAULT_LIFETIME) -> None:
        self.key, self.cert, self.ca_pem, self.lifetime = key, cert, ca_pem, lifetime

    def sign(self, content: bytes) -> bytes:
        """DER PKCS#7 SignedData: attached, the leaf only, no signed attributes, SHA-256."""
        return pkcs7.PKCS7SignatureBuilder().set_data(content).add_signer(
            self.cert, self.key, hashes.SHA256()).sign(
            serialization.Encoding.DER,
            [pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.NoAttributes])

    def document(self, compute: Mapping[str, Any], version: str, nonce: str | None,
                 now: float) -> bytes:
        """The 200 body."""
        return self.envelope(signed_content(compute, version, nonce, now, self.lifetime))

    def envelope(self, content: bytes) -> bytes:
        """The 200 body for ``content`` (thread-safe: the key is only read)."""
        der = self.sign(content)
        return json.dumps({"encoding": "pkcs7",
                           "signature": base64.b64encode(der).decode()}).encode()

    @classmethod
    def from_files(cls, key_path: Path, cert_path: Path, ca_path: Path | None = None, *,
                   lifetime: int = DEFAULT_LIFETIME) -> AttestedSigner:
        key = serialization.load_pem_private_key(_read(key_path, "attested-key"), None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(f"{key_path} is not an RSA private key", key="attested-key")
        try:
            cert = x509.load_pem_x509_certificate(_read(cert_path, "attested-cert"))
        except ValueError as exc:
            raise ConfigError(f"{cert_path} is not a PEM certificate: {exc}",
                              key="attested-cert") from None
        public = cert.public_key()
        if not isinstance(public, rsa.RSAPublicKey) or \
                public.public_numbers() != key.public_key().public_numbers():
            raise ConfigError(f"{cert_path} is not the certificate of {key_path}",
                              key="attested-cert")
        ca = _read(ca_path, "attested-ca") if ca_path is not None else None
        return cls(key, cert, ca_pem=ca, lifetime=lifetime)

    @classmethod
    def demo(cls, directory: Path | None, *, lifetime: int = DEFAULT_LIFETIME
             ) -> AttestedSigner:
        """The throwaway demo CA and leaf in ``directory`` (made once), or in memory."""
        if directory is not None and (directory / "signing-cert.pem").exists():
            return cls.from_files(directory / "signing-key.pem",
                                  directory / "signing-cert.pem", directory / "ca.pem",
                                  lifetime=lifetime)
        ca_key, ca_cert, key, cert = make_demo_chain()
        pem = serialization.Encoding.PEM
        ca_pem = ca_cert.public_bytes(pem)
        if directory is not None:
            private = (serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            write_private_pem(directory / "ca.pem", ca_pem)
            write_private_pem(directory / "signing-key.pem", key.private_bytes(pem, *private))
            write_private_pem(directory / "signing-cert.pem", cert.public_bytes(pem))
        del ca_key  # thrown away: the demo CA signs nothing else
        return cls(key, cert, ca_pem=ca_pem, lifetime=lifetime)


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key=setting) from None


def make_demo_chain() -> tuple[rsa.RSAPrivateKey, x509.Certificate,
                               rsa.RSAPrivateKey, x509.Certificate]:
    """A self-signed CA and a leaf it signed (no extended key usage: any purpose)."""
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    later = now + datetime.timedelta(days=365)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                            "imds-replica demo attestation CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(later)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                            False, False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                              critical=False)
               .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "metadata.imds-replica.demo")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(later)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                         False, False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return ca_key, ca_cert, key, cert
