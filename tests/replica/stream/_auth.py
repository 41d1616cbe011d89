"""Credentials for tests against a real nats-server: a NATS operator, account and user
(JWT v2, signed with nkeys) written as a creds file, and a TLS CA with a server
certificate for 127.0.0.1 (made with ``cryptography``)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import time
from pathlib import Path
from typing import Any

import nkeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
              "wildcards": True, "conn": -1, "leaf": -1}


def _key(prefix: int) -> tuple[Any, bytes]:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return nkeys.from_seed(seed), seed


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(claims: dict[str, Any], signer: Any) -> str:
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    claims = dict(claims, iat=int(time.time()), jti="")
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    body = _b64(json.dumps(claims).encode())
    return f"{header}.{body}.{_b64(signer.sign(f'{header}.{body}'.encode()))}"


class Operator:
    """An operator with one JetStream-enabled account (and a system account)."""

    def __init__(self) -> None:
        self._op, _ = _key(nkeys.PREFIX_BYTE_OPERATOR)
        self._account, _ = _key(nkeys.PREFIX_BYTE_ACCOUNT)
        system, _ = _key(nkeys.PREFIX_BYTE_ACCOUNT)
        op = self._op.public_key.decode()
        self.account = self._account.public_key.decode()
        self.system = system.public_key.decode()
        self._op_jwt = _jwt({"iss": op, "sub": op, "name": "op",
                             "nats": {"type": "operator", "version": 2}}, self._op)
        limits = dict(_UNLIMITED, mem_storage=-1, disk_storage=-1, streams=-1, consumer=-1)
        self._account_jwt = _jwt({"iss": op, "sub": self.account, "name": "imds",
                                  "nats": {"limits": limits, "type": "account",
                                           "version": 2}}, self._op)
        self._system_jwt = _jwt({"iss": op, "sub": self.system, "name": "SYS",
                                 "nats": {"limits": _UNLIMITED, "type": "account",
                                          "version": 2}}, self._op)

    def server_config(self) -> str:
        return (f"operator: {self._op_jwt}\nsystem_account: {self.system}\n"
                f"resolver: MEMORY\nresolver_preload: {{\n  {self.account}: "
                f"{self._account_jwt}\n  {self.system}: {self._system_jwt}\n}}\n")

    def creds(self, path: Path, name: str, *, signer: Any = None) -> Path:
        """A creds file for user ``name`` of the account (signed by ``signer``: another
        account's key makes a user the server does not know)."""
        user, seed = _key(nkeys.PREFIX_BYTE_USER)
        issuer = signer or self._account
        token = _jwt({"iss": issuer.public_key.decode(), "sub": user.public_key.decode(),
                      "name": name, "nats": {"pub": {}, "sub": {}, "subs": -1, "data": -1,
                                             "payload": -1, "type": "user",
                                             "version": 2}}, issuer)
        path.write_text(f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER "
                        f"JWT------\n\n-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n"
                        f"------END USER NKEY SEED------\n")
        return path

    @staticmethod
    def stranger() -> Any:
        """An account key no operator signed."""
        return _key(nkeys.PREFIX_BYTE_ACCOUNT)[0]


def tls_files(directory: Path, name: str = "ca") -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for 127.0.0.1 and localhost."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"imds test {name}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nats")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = (directory / f"{name}.pem", directory / f"{name}-server.pem",
                                    directory / f"{name}-server.key")
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path
