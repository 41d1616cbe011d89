"""Load balancer, ``extended=true``, reprovisiondata, the Retry-After rule, the
storageProfile fields and the ``Server`` header."""

from __future__ import annotations

import json
from typing import Any

import pytest

from imds_replica import Event, ImdsError, LivelinessPolicy, LivelinessTracker, Unavailable, View
from imds_server import ApiPolicy, Request, Response, VmApi
from imds_server._request import RETRY_AFTER_STATUSES, failure
from imds_server._versions import gate_storage

from .conftest import CALLER_A, CALLER_B, MD, VM_A, get, make_config, running

NOW = 10_000.0
LB = {"publicIpAddresses": [{"frontendIpAddress": "51.1.1.1", "privateIpAddress": "10.0.0.4"}],
      "inboundRules": [{"frontendIpAddress": "51.1.1.1", "protocol": "tcp",
                        "frontendPort": 443, "backendPort": "8443",
                        "privateIpAddress": "10.0.0.4"}],
      "outboundRules": [{"frontendIpAddress": "51.1.1.2", "privateIpAddress": "10.0.0.4"}]}


def make(view: View, tracker: LivelinessTracker | None = None) -> VmApi:
    if tracker is None:
        tracker = LivelinessTracker({"fabric": LivelinessPolicy.pushed(),
                                     "hostnet": LivelinessPolicy.pushed()})
        for source in ("fabric", "tags", "hostnet"):
            tracker.contact(source, NOW - 1)
    api = VmApi(ApiPolicy(rate_limit=0), started=NOW - 100)
    api.attach(view, tracker)
    return api


def call(api: VmApi, target: str, *, caller: str = CALLER_A, headers: Any = None,
         now: float = NOW) -> Response:
    hdrs = {k.lower(): v for k, v in (MD if headers is None else headers).items()}
    result = api.handle(Request("GET", target, hdrs), caller, now)
    assert isinstance(result, Response), result
    return result


def body(resp: Response) -> Any:
    return json.loads(resp.body)


# -- load balancer ----------------------------------------------------------------------
def test_loadbalancer_in_the_published_shape(view: View) -> None:
    view.apply(Event("fabric", ("vms", VM_A, "loadbalancer"), 3, LB))
    resp = call(make(view), "/metadata/loadbalancer?api-version=2020-10-01")
    assert resp.status == 200
    lb = body(resp)["loadbalancer"]
    assert set(lb) == {"publicIpAddresses", "inboundRules", "outboundRules"}
    rule = lb["inboundRules"][0]
    assert rule["frontendPort"] == 443  # ports are JSON numbers, as in Azure's sample
    assert rule["backendPort"] == 8443
    assert rule["protocol"] == "tcp"
    assert lb["outboundRules"] == LB["outboundRules"]


def test_loadbalancer_absent_is_404_with_the_documented_message(view: View) -> None:
    resp = call(make(view), "/metadata/loadbalancer?api-version=2021-02-01", caller=CALLER_B)
    assert resp.status == 404
    assert body(resp) == {"error": "No load balancer metadata is found. Check if your virtual "
                          "machine is using any nonbasic SKU load balancer and retry later."}
    assert "Retry-After" not in dict(resp.headers)


def test_loadbalancer_needs_2020_10_01(view: View) -> None:
    view.apply(Event("fabric", ("vms", VM_A, "loadbalancer"), 3, LB))
    resp = call(make(view), "/metadata/loadbalancer?api-version=2020-09-01")
    assert resp.status == 400
    assert "newest-versions" in body(resp)


def test_loadbalancer_change_is_seen(view: View) -> None:
    api = make(view)
    assert call(api, "/metadata/loadbalancer?api-version=2020-10-01").status == 404
    view.apply(Event("fabric", ("vms", VM_A, "loadbalancer"), 3, LB))
    assert call(api, "/metadata/loadbalancer?api-version=2020-10-01").status == 200


# -- extended=true ------------------------------------------------------------------------
def test_extended_adds_pps_type_and_a_boolean_has_custom_data(view: View) -> None:
    api = make(view)
    doc = body(call(api, "/metadata/instance?api-version=2021-03-01&extended=true"))
    assert doc["extended"] == {"compute": {"ppsType": "None", "hasCustomData": False}}
    view.apply(Event("fabric", ("vms", VM_A, "extended", "compute"), 3,
                     {"ppsType": "Running", "hasCustomData": True}))
    doc = body(call(api, "/metadata/instance?api-version=2021-03-01&extended=true"))
    assert doc["extended"]["compute"] == {"ppsType": "Running", "hasCustomData": True}
    assert doc["compute"]["vmId"] == VM_A
    # Without extended, or before 2021-03-01: the answer stays as it was.
    assert "extended" not in body(call(api, "/metadata/instance?api-version=2021-03-01"))
    assert "extended" not in body(call(
        api, "/metadata/instance?api-version=2021-02-01&extended=true"))


def _tracker(tags_contact: float | None) -> LivelinessTracker:
    tracker = LivelinessTracker({"fabric": LivelinessPolicy.pushed(),
                                 "hostnet": LivelinessPolicy.pushed(),
                                 "tags": LivelinessPolicy(60, 180, 3600)})
    tracker.contact("fabric", NOW - 1)
    tracker.contact("hostnet", NOW - 1)
    if tags_contact is not None:
        tracker.contact("tags", tags_contact)
    return tracker


@pytest.mark.parametrize(("contact", "state"), [(NOW - 4000, "expired"), (None, "unknown")])
def test_extended_refuses_partial_data(view: View, contact: float | None, state: str) -> None:
    api = make(view, _tracker(contact))
    resp = call(api, "/metadata/instance?api-version=2021-03-01&extended=true")
    assert resp.status == 503
    assert f"tags ({state})" in body(resp)["error"]
    headers = dict(resp.headers)
    assert headers["Retry-After"] == "10"
    assert f"tags;state={state}" in headers["Imds-Freshness"]
    assert resp.refused == "partial-data"
    # Without extended=true the same data is answered, as today.
    assert call(api, "/metadata/instance?api-version=2021-03-01").status == 200


def test_extended_answers_stale_data_and_unknown_pushed_sources(view: View) -> None:
    tracker = _tracker(NOW - 500)  # stale, not expired
    tracker2 = LivelinessTracker({"fabric": LivelinessPolicy.pushed(),
                                  "hostnet": LivelinessPolicy.pushed()})
    tracker2.contact("tags", NOW - 1)  # fabric (pushed) never heard since start: fine
    for t in (tracker, tracker2):
        resp = call(make(view, t), "/metadata/instance?api-version=2021-03-01&extended=true")
        assert resp.status == 200, resp.body


# -- reprovisiondata ----------------------------------------------------------------------
def test_reprovisiondata_when_a_register_holds_it(view: View) -> None:
    api = make(view)
    target = "/metadata/reprovisiondata?api-version=2019-06-01"
    missing = call(api, target)
    assert missing.status == 404
    assert "Retry-After" not in dict(missing.headers)
    view.apply(Event("fabric", ("vms", VM_A, "reprovisiondata"), 3, "<Environment/>"))
    resp = call(api, target)
    assert resp.status == 200
    assert resp.body == b"<Environment/>"


# -- Retry-After only on 410, 429, 503 -----------------------------------------------------
def test_retry_after_never_on_400_403_404(view: View) -> None:
    api = make(view)
    answers = [
        call(api, "/metadata/instance?api-version=2021-02-01", headers={}),  # 400
        call(api, "/metadata/instance?api-version=1999-01-01"),  # 400
        call(api, "/metadata/instance/compute/name?api-version=2021-02-01"),  # leaf: 400
        call(api, "/metadata/instance?api-version=2021-02-01", caller="10.1.1.1"),  # 403
        call(api, "/metadata/instance/nope?api-version=2021-02-01"),  # 404
        call(api, "/metadata/loadbalancer?api-version=2021-02-01"),  # 404
        call(api, "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=r"),
    ]
    assert {a.status for a in answers} == {400, 403, 404}
    for answer in answers:
        assert "Retry-After" not in dict(answer.headers), answer


def test_library_errors_carry_retry_after_only_on_the_retryable_statuses() -> None:
    assert {410, 429, 503} == RETRY_AFTER_STATUSES
    assert dict(failure(Unavailable("busy", retry_after=3)).headers) == {"Retry-After": "3"}
    for status in (400, 404, 500, 507):
        exc = Unavailable("x", retry_after=3, status=status)
        assert "Retry-After" not in dict(failure(exc).headers), status
    assert "Retry-After" not in dict(failure(ImdsError("bad", status=400)).headers)


# -- storageProfile -----------------------------------------------------------------------
STORAGE = {"imageReference": {"id": "", "offer": "o", "publisher": "p", "sku": "s",
                              "version": "v", "exactVersion": "1.2.3",
                              "sharedGalleryImageId": "", "communityGalleryImageId": ""},
           "osDisk": {"name": "os", "encryptionSettings": {"enabled": "false"}},
           "resourceDisk": {"size": "16384"},
           "dataDisks": [{"lun": "0", "name": "d0", "diskCapacityBytes": "1073741824",
                          "isSharedDisk": "false", "isUltraDisk": "false",
                          "bytesPerSecondThrottle": "0", "opsPerSecondThrottle": "0",
                          "encryptionSettings": {"enabled": "false"}}]}


def test_storage_profile_fields_by_version() -> None:
    old = gate_storage(STORAGE, "2019-06-01")
    assert set(old["imageReference"]) == {"id", "offer", "publisher", "sku", "version"}
    assert "resourceDisk" not in old or "size" not in old["resourceDisk"]
    assert set(old["dataDisks"][0]) == {"lun", "name"}
    assert "encryptionSettings" not in old["osDisk"]
    mid = gate_storage(STORAGE, "2021-05-01")
    assert mid["resourceDisk"] == {"size": "16384"}
    assert mid["dataDisks"][0]["diskCapacityBytes"] == "1073741824"
    assert "encryptionSettings" not in mid["dataDisks"][0]
    new = gate_storage(STORAGE, "2023-07-01")
    assert new["imageReference"]["exactVersion"] == "1.2.3"
    assert new["osDisk"]["encryptionSettings"] == {"enabled": "false"}


def test_storage_profile_fields_missing_from_data_are_present_as_empty() -> None:
    bare = {"imageReference": {"sku": "s"}, "osDisk": {}, "dataDisks": [{"lun": "0"}]}
    new = gate_storage(bare, "2023-07-01")
    assert new["imageReference"]["exactVersion"] == ""
    assert new["resourceDisk"] == {"size": ""}
    assert new["dataDisks"][0]["isUltraDisk"] == ""
    assert "encryptionSettings" not in new["osDisk"]  # an object: not invented


def test_storage_profile_in_the_instance_document(view: View) -> None:
    api = make(view)
    new = body(call(api, "/metadata/instance/compute/storageProfile?api-version=2023-07-01"))
    assert new["imageReference"]["exactVersion"] == ""
    assert new["resourceDisk"] == {"size": ""}
    old = body(call(api, "/metadata/instance/compute/storageProfile?api-version=2021-01-01"))
    assert "exactVersion" not in old["imageReference"]


# -- Server header, over sockets ----------------------------------------------------------
async def test_every_answer_names_the_server() -> None:
    async with running(make_config()) as server:
        for target, headers in (("/metadata/instance?api-version=2021-02-01", MD),
                                ("/metadata/instance?api-version=2021-02-01", {}),
                                ("/nowhere", MD)):
            reply = await get(server.vm_address, target, headers=headers)
            assert reply.headers["server"].startswith("imds-replica/"), reply.headers
        stranger = await get(server.vm_address, "/metadata/instance?api-version=2021-02-01",
                             source="127.0.0.9")
        assert stranger.status == 403
        assert stranger.headers["server"].startswith("imds-replica/")
        admin = await get(server.admin_address, "/healthz")
        assert admin.headers["server"].startswith("imds-replica/")
