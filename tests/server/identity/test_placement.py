"""The token service's placement file: a host gets tokens only for the identities of the
VMs placed on it, exactly as listed, and the file is re-read when it changes."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import trio

from imds_replica import ConfigError
from imds_server.identity import (
    Identity,
    IssuerError,
    LocalIssuer,
    Placement,
    PlacementFile,
    RemoteIssuer,
    TokenRequest,
    TokenServiceApp,
    serve_token_service,
)
from imds_server.identity.testing import SYSTEM, USER

SECRETS = {"host-1": "host-one-secret-0123456789", "host-2": "host-two-secret-0123456789"}


def placement_json(**hosts: dict[str, list[Identity]]) -> str:
    return json.dumps({h: {vm: [i.to_dict() for i in ids] for vm, ids in vms.items()}
                       for h, vms in hosts.items()})


def write(path: Path, text: str) -> None:
    path.write_text(text)
    stat = path.stat()  # a rewrite within one mtime tick must still be seen as new
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def test_refusals_say_what_is_not_allowed() -> None:
    placement = Placement.from_json(json.loads(placement_json(
        **{"host-1": {"vm-a": [SYSTEM, USER]}, "host-2": {"vm-b": [SYSTEM]}})))
    assert placement.refusal("host-1", "vm-a", USER) is None
    assert placement.refusal("host-1", "vm-b", SYSTEM) == "VM vm-b is not placed on host host-1"
    assert placement.refusal("host-3", "vm-a", SYSTEM) == \
        "host host-3 has no VMs in the placement"
    # A real object id with a forged tenant beside it is not the listed identity.
    forged = Identity(USER.kind, USER.client_id, USER.object_id, "tenant-evil", USER.resource_id)
    assert placement.refusal("host-1", "vm-a", forged) == \
        f"VM vm-a has no such identity (objectId {USER.object_id})"


@pytest.mark.parametrize(("value", "reason"), [
    ([], "must be an object of hosts"),
    ({"h": []}, "host 'h' must map VM ids"),
    ({"h": {"v": {}}}, "'h'/'v' must be a list of identities"),
    ({"h": {"v": [{"kind": "nope"}]}}, "'h'/'v': identity.clientId must be a string"),
    ({"h": {"v": [{"kind": "bad", "clientId": "c", "objectId": "o", "tenantId": "t"}]}},
     "'h'/'v': "),
])
def test_a_bad_placement_names_the_entry(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match="^placement: " + reason.replace("(", r"\(")):
        Placement.from_json(value)


def test_an_unreadable_placement_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text("{")
    with pytest.raises(ConfigError, match="is not JSON") as info:
        PlacementFile(tmp_path / "p.json")
    assert info.value.key == "placement"
    with pytest.raises(ConfigError, match="cannot read"):
        PlacementFile(tmp_path / "missing.json")


async def test_hosts_get_only_their_own_vms_identities(nursery: trio.Nursery,
                                                      tmp_path: Path) -> None:
    path = tmp_path / "placement.json"
    write(path, placement_json(**{"host-1": {"vm-a": [SYSTEM]}, "host-2": {"vm-b": [USER]}}))
    placement = PlacementFile(path)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}"
    local = LocalIssuer.from_config(key_path=None, key_dir=tmp_path, issuer=f"{url}/identity")
    app = TokenServiceApp(local, {s: h for h, s in SECRETS.items()}, placement=placement)
    await nursery.start(serve_token_service, sock, app)
    host1 = RemoteIssuer(url, credential=SECRETS["host-1"])

    await host1.issue(TokenRequest("vm-a", SYSTEM, "https://r"), 1_800_000_000.0)
    with pytest.raises(IssuerError, match=r"403.*VM vm-b is not placed on host host-1"):
        await host1.issue(TokenRequest("vm-b", USER, "https://r"), 1_800_000_000.0)
    with pytest.raises(IssuerError, match=r"403.*has no such identity"):
        await host1.issue(TokenRequest("vm-a", USER, "https://r"), 1_800_000_000.0)
    assert (app.issued, app.forbidden) == (1, 2)

    # vm-b moves to host-1: the file is re-read, host-1 may now, host-2 may not.
    write(path, placement_json(**{"host-1": {"vm-a": [SYSTEM], "vm-b": [USER]}}))
    await host1.issue(TokenRequest("vm-b", USER, "https://r"), 1_800_000_000.0)
    with pytest.raises(IssuerError, match=r"403.*host host-2 has no VMs"):
        await RemoteIssuer(url, credential=SECRETS["host-2"]).issue(
            TokenRequest("vm-b", USER, "https://r"), 1_800_000_000.0)
    # A broken rewrite does not open the service: the last good placement stays.
    write(path, '{"host-1": ')
    with pytest.raises(IssuerError, match="403"):
        await RemoteIssuer(url, credential=SECRETS["host-2"]).issue(
            TokenRequest("vm-b", USER, "https://r"), 1_800_000_000.0)
    await host1.issue(TokenRequest("vm-b", USER, "https://r"), 1_800_000_000.0)
    assert placement.reload_errors == 1
    assert "is not JSON" in str(placement.last_error)
    assert (placement.reloads, app.issued) == (1, 3)
