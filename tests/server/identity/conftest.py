"""Identity fixtures: a fleet whose VM A has a system-assigned and two user-assigned
identities (VM B has none), and a fake issuer whose failures the tests switch on."""

from __future__ import annotations

from typing import Any

from imds_replica import Event
from imds_server.identity import IssuedToken, IssuerError, LocalIssuer, TokenRequest

from ..conftest import VM_A, fleet_events

TENANT = "tenant-0001"
SYSTEM = {"clientId": "client-sys", "objectId": "object-sys", "tenantId": TENANT}
USER1_ID = ("/subscriptions/sub/resourceGroups/rg/providers/"
            "Microsoft.ManagedIdentity/userAssignedIdentities/app-one")
USER2_ID = ("/subscriptions/sub/resourceGroups/rg/providers/"
            "Microsoft.ManagedIdentity/userAssignedIdentities/app-two")
USER1 = {"clientId": "client-u1", "objectId": "object-u1", "tenantId": TENANT}
USER2 = {"clientId": "client-u2", "objectId": "object-u2", "tenantId": TENANT}
RESOURCE = "https://management.azure.com/"
TOKEN = "/metadata/identity/oauth2/token?api-version=2018-02-01"


def identity_events(vm: str = VM_A, *, system: bool = True,
                    users: tuple[tuple[str, dict[str, str]], ...] = ((USER1_ID, USER1),
                                                                     (USER2_ID, USER2))
                    ) -> list[Event]:
    out = []
    if system:
        out.append(Event("fabric", ("vms", vm, "identity", "systemAssigned"), 5, SYSTEM))
    for rid, value in users:
        out.append(Event("fabric", ("vms", vm, "identity", "userAssigned", rid), 5, value))
    return out


def identity_fleet(**kw: Any) -> list[Event]:
    return fleet_events() + identity_events(**kw)


class FakeIssuer:
    """Signs with a real ``LocalIssuer``; counts calls; fails while ``failing`` is set;
    waits on ``gate`` (if set) before answering, so tests can hold requests in flight."""

    def __init__(self, lifetime: int = 7200) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.local = LocalIssuer(rsa.generate_private_key(public_exponent=65537,
                                                          key_size=2048),
                                 issuer="https://issuer.test/", lifetime=lifetime)
        self.calls = 0
        self.failing = False
        self.gate: Any = None

    @property
    def issuer(self) -> str:
        return self.local.issuer

    async def issue(self, request: TokenRequest, now: float) -> IssuedToken:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise IssuerError("issuer down (test)")
        return self.local.sign(request, now)

    async def jwks(self) -> dict[str, Any]:
        return self.local.jwks_document()
