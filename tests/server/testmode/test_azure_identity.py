"""Unmodified azure-identity against test mode: a managed-identity token through a 410
window (the host agent "updating"), fetched as the SDK's retry policy promises — each 410
retried after the Retry-After it carried, the token once the window closes."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
import trio

from imds_replica import MemoryLog
from imds_server._observe import AccessRecord
from imds_server.testmode import FaultRule, TestMode, TestModeServer, parse_fleet

from ..conftest import make_config

pytestmark = pytest.mark.integration
SCOPE = "https://management.azure.com/.default"
IDENTITY = {"clientId": "7a1b2c3d-0000-4000-8000-000000000001",
            "objectId": "7a1b2c3d-0000-4000-8000-000000000002",
            "tenantId": "7a1b2c3d-0000-4000-8000-000000000003"}
ENV = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT",
       "MSI_SECRET", "IMDS_ENDPOINT", "AZURE_CLIENT_ID", "AZURE_TENANT_ID",
       "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_USERNAME",
       "AZURE_PASSWORD", "AZURE_AUTHORITY_HOST", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
       "https_proxy")


class Recorder:
    def __init__(self) -> None:
        self.records: list[AccessRecord] = []

    def request(self, record: AccessRecord) -> None:
        self.records.append(record)


def _token() -> Any:
    from azure.identity import ManagedIdentityCredential

    with ManagedIdentityCredential() as credential:
        return credential.get_token(SCOPE)


async def test_azure_identity_waits_out_a_410_window_as_its_retry_policy_promises(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    fleet = parse_fleet({"vms": {"vm-sdk": {
        "callers": ["127.0.0.1"], "compute": {"name": "sdk-1"},
        "identity": {"systemAssigned": IDENTITY}}}})
    mode = TestMode(fleet)
    recorder = Recorder()
    server = TestModeServer(make_config(rate_limit=0.0), mode, log=MemoryLog(),
                            observer=recorder)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        await server.wait_ready()
        await mode.seeded.wait()
        host, port = server.vm_address[:2]
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", f"http://{host}:{port}")
        mode.add_fault(FaultRule(path="/metadata/identity/*", status=410, retry_after=1,
                                 duration=2.5))
        started = time.monotonic()
        token = await trio.to_thread.run_sync(_token)
        elapsed = time.monotonic() - started
        server.shutdown()
    assert token.token
    assert token.expires_on > time.time() + 600
    answers = [r for r in recorder.records if r.path.startswith("/metadata/identity")]
    statuses = [r.status for r in answers]
    assert statuses[0] == 410, statuses
    assert statuses[-1] == 200, statuses
    assert set(statuses[:-1]) == {410}, statuses  # retried only while the window lasted
    # Each 410 carried Retry-After: 1, and the SDK waited at least that long each time.
    for failed, retried in itertools.pairwise(answers):
        assert retried.time - failed.time >= 0.9, (failed, retried)
    assert elapsed >= 2.0  # it rode out the window rather than failing inside it
