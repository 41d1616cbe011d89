"""The attested document: PKCS#7 SignedData that ``openssl smime -verify`` accepts
against the CA the admin listener publishes, the nonce rule, and api-version gating."""

from __future__ import annotations

import base64
import datetime
import json
import re
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from imds_replica import ConfigError
from imds_server._attested import NONCE_RULE, AttestedSigner, make_demo_chain, signed_content

from .._serve import listening_socket, spawn_server
from .._tools import require_tool
from .conftest import CALLER_B, MD, VM_A, get, make_config, running, wait_until

ATTESTED = "/metadata/attested/document"
NONCE = "aZ09bY18cX27dW36eV45fU54gT63hS72"  # 32 mixed-case letters and digits


def openssl() -> str:
    return require_tool("openssl", "openssl")


def signature(reply_body: bytes) -> bytes:
    doc = json.loads(reply_body)
    assert doc["encoding"] == "pkcs7"
    return base64.b64decode(doc["signature"])


def smime_verify(der: bytes, ca_pem: bytes, tmp_path: Path) -> dict[str, Any]:
    """What the public docs tell guests to do; returns the verified content."""
    (tmp_path / "sig.der").write_bytes(der)
    (tmp_path / "ca.pem").write_bytes(ca_pem)
    done = subprocess.run([openssl(), "smime", "-verify", "-inform", "DER", "-in",
                           str(tmp_path / "sig.der"), "-CAfile", str(tmp_path / "ca.pem")],
                          capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert b"Verification successful" in done.stderr
    content: dict[str, Any] = json.loads(done.stdout)
    return content


@pytest.fixture
def signer(tmp_path: Path) -> AttestedSigner:
    return AttestedSigner.demo(tmp_path / "keys")


async def test_document_verifies_with_openssl_and_echoes_the_nonce(
        signer: AttestedSigner, tmp_path: Path) -> None:
    async with running(make_config()) as server:
        server.api.attested = signer
        reply = await get(server.vm_address,
                          f"{ATTESTED}?api-version=2021-02-01&nonce={NONCE}")
        assert reply.status == 200, reply.body
        assert signer.ca_pem is not None
        content = smime_verify(signature(reply.body), signer.ca_pem, tmp_path)
    assert content["nonce"] == NONCE
    assert content["vmId"] == VM_A
    assert content["plan"] == {"name": "", "product": "", "publisher": ""}
    assert content["subscriptionId"] == "8d10da13-8125-4ba9-a717-bf7490507b3d"
    assert content["sku"] == "22_04-lts-gen2"
    created = datetime.datetime.strptime(content["timeStamp"]["createdOn"],
                                         "%m/%d/%y %H:%M:%S -0000")
    expires = datetime.datetime.strptime(content["timeStamp"]["expiresOn"],
                                         "%m/%d/%y %H:%M:%S -0000")
    assert expires - created == datetime.timedelta(hours=6)


async def test_signing_runs_off_the_loop_while_other_guests_are_answered(
        signer: AttestedSigner) -> None:
    """RSA signing releases the GIL: in a worker thread it costs the loop nothing. A
    signature that waits until another VM has been answered can only finish if the loop
    kept serving meanwhile (on the loop, it would wait out its 5 s and report it)."""
    answered_meanwhile = threading.Event()
    threads: list[bool] = []
    sign = signer.sign

    def slow_sign(content: bytes) -> bytes:
        threads.append(threading.current_thread() is threading.main_thread())
        answered_meanwhile.wait(5)
        return sign(content)

    signer.sign = slow_sign  # type: ignore[method-assign]
    async with running(make_config()) as server, trio.open_nursery() as nursery:
        server.api.attested = signer
        replies: list[Any] = []

        async def attested() -> None:
            replies.append(await get(server.vm_address, f"{ATTESTED}?api-version=2021-02-01"))

        nursery.start_soon(attested)
        await wait_until(lambda: bool(threads))
        other = await get(server.vm_address, "/metadata/instance?api-version=2021-02-01",
                          source=CALLER_B)
        assert other.status == 200
        answered_meanwhile.set()
    assert threads == [False]  # signed in a worker thread
    assert replies[0].status == 200
    assert signature(replies[0].body)


def test_structure_is_what_the_wire_reference_says(signer: AttestedSigner,
                                                   tmp_path: Path) -> None:
    content = signed_content({"vmId": "v"}, "2021-02-01", "n1", 1_700_000_000)
    der = signer.sign(content)
    certs = pkcs7.load_der_pkcs7_certificates(der)
    assert len(certs) == 1  # the leaf only
    assert certs[0] == signer.cert
    (tmp_path / "sig.der").write_bytes(der)
    printed = subprocess.run([openssl(), "cms", "-cmsout", "-print", "-inform", "DER", "-in",
                              str(tmp_path / "sig.der")], capture_output=True, check=True,
                             text=True).stdout
    assert re.search(r"signedAttrs:\s*<ABSENT>", printed)
    assert re.search(r"digestAlgorithm:\s*algorithm: sha256", printed)
    # Content attached: the signed JSON is inside (openssl prints it as a hex dump).
    attached = re.search(r"eContent:\s*\n(.*?)\n\s*certificates:", printed, re.S)
    assert attached is not None
    dumped = "".join(re.findall(r"- ((?:[0-9a-f]{2}[ -]){1,16})", attached.group(1)))
    assert bytes.fromhex(dumped.replace("-", " ")) == content


@pytest.mark.parametrize("nonce", ["", "x" * 33, "abc-def", "ab%20cd", "caf%C3%A9"])
async def test_bad_nonce_is_400_naming_the_rule(signer: AttestedSigner, nonce: str) -> None:
    async with running(make_config()) as server:
        server.api.attested = signer
        reply = await get(server.vm_address, f"{ATTESTED}?api-version=2021-02-01&nonce={nonce}")
        assert reply.status == 400
        assert NONCE_RULE in reply.json()["error"]
        assert "retry-after" not in reply.headers


def test_default_nonce_is_the_timestamp_form() -> None:
    content = json.loads(signed_content({"vmId": "v"}, "2021-02-01", None,
                                        datetime.datetime(2024, 3, 5, 7, 8, 9,
                                                          tzinfo=datetime.UTC).timestamp()))
    assert content["nonce"] == "20240305-070809"
    assert content["timeStamp"]["createdOn"] == "03/05/24 07:08:09 -0000"


def test_fields_are_gated_by_api_version() -> None:
    compute = {"vmId": "v", "subscriptionId": "s", "sku": "k", "licenseType": "Windows_Server",
               "plan": {"name": "p", "product": "q", "publisher": "r"}}

    def fields(version: str, **changes: Any) -> set[str]:
        return set(json.loads(signed_content({**compute, **changes}, version, "n", 0)))

    base = {"nonce", "plan", "timeStamp", "vmId"}
    assert fields("2018-10-01") == base
    assert fields("2019-04-30") == base | {"subscriptionId"}
    assert fields("2019-11-01") == base | {"subscriptionId", "sku"}
    assert fields("2020-09-01") == base | {"subscriptionId", "sku", "licenseType"}
    assert fields("2020-09-01", licenseType="") == base | {"subscriptionId", "sku"}


async def test_versions_before_2018_10_01_are_refused(signer: AttestedSigner) -> None:
    async with running(make_config()) as server:
        server.api.attested = signer
        reply = await get(server.vm_address, f"{ATTESTED}?api-version=2018-04-02")
        assert reply.status == 400
        assert "newest-versions" in reply.json()


def test_configured_key_and_certificate(tmp_path: Path) -> None:
    _, ca, key, cert = make_demo_chain()
    pem = serialization.Encoding.PEM
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(pem))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    signer = AttestedSigner.from_files(tmp_path / "key.pem", tmp_path / "cert.pem",
                                       tmp_path / "ca.pem")
    assert signer.ca_pem == ca.public_bytes(pem)
    # A certificate that is not the key's is refused, naming the setting.
    _, _, _, other = make_demo_chain()
    (tmp_path / "other.pem").write_bytes(other.public_bytes(pem))
    with pytest.raises(ConfigError) as info:
        AttestedSigner.from_files(tmp_path / "key.pem", tmp_path / "other.pem")
    assert info.value.key == "attested-cert"
    with pytest.raises(ConfigError, match="go together"):
        make_config(attested_key=tmp_path / "key.pem")
    assert isinstance(x509.load_pem_x509_certificate(signer.cert.public_bytes(pem)),
                      x509.Certificate)


async def test_demo_process_serves_a_document_openssl_verifies_with_its_ca(
        tmp_path: Path) -> None:
    vm_sock, admin_sock = listening_socket(), listening_socket()
    proc = await spawn_server(vm_sock, admin_sock, tmp_path / "data")
    try:
        import httpx

        vm = "http://{}:{}".format(*vm_sock.getsockname()[:2])
        admin = "http://{}:{}".format(*admin_sock.getsockname()[:2])
        async with httpx.AsyncClient() as client:
            async def ready() -> bool:
                try:
                    return (await client.get(f"{admin}/healthz")).status_code == 200
                except httpx.HTTPError:
                    return False

            for _ in range(1000):
                if await ready():
                    break
                await trio.sleep(0.02)
            ca = await client.get(f"{admin}/attested/ca.pem")
            doc = await client.get(f"{vm}{ATTESTED}?api-version=2021-02-01&nonce=abc123",
                                   headers=MD)
        assert ca.status_code == 200
        assert doc.status_code == 200
        content = smime_verify(signature(doc.content), ca.content, tmp_path)
        assert content["nonce"] == "abc123"
        # The throwaway chain lives beside the data directory, not in the log directory.
        assert (tmp_path / "data.keys" / "attested" / "ca.pem").read_bytes() == ca.content
    finally:
        proc.terminate()
        await proc.wait()
        vm_sock.close()
        admin_sock.close()
