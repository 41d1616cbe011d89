"""The VM-facing handler without sockets: every rule of the wire contract."""

from __future__ import annotations

import json
from typing import Any

import pytest

from imds_replica import (
    Event,
    ImdsError,
    LivelinessTracker,
    StorageError,
    Unavailable,
    ValidationError,
    View,
)
from imds_server import ApiPolicy, Park, Request, Response, Submit, VmApi
from imds_server._request import failure
from imds_server._versions import NEWEST_THREE, VERSIONS

from .conftest import CALLER_A, CALLER_B, EVENT_ID, MD, VM_A, V

NOW = 1000.0


def make_api(view: View, liveliness: LivelinessTracker, **policy: Any) -> VmApi:
    api = VmApi(ApiPolicy(**{"rate_limit": 0, **policy}), started=NOW - 100)
    api.attach(view, liveliness)
    return api


def call(api: VmApi, target: str, *, headers: dict[str, str] | None = None,
         method: str = "GET", caller: str = CALLER_A, body: bytes = b"",
         now: float = NOW) -> Any:
    hdrs = {k.lower(): v for k, v in (MD if headers is None else headers).items()}
    return api.handle(Request(method, target, hdrs, body), caller, now)


def answer(api: VmApi, target: str, **kw: Any) -> Response:
    result = call(api, target, **kw)
    assert isinstance(result, Response), result
    return result


def body(resp: Response) -> Any:
    return json.loads(resp.body)


@pytest.fixture
def api(view: View, liveliness: LivelinessTracker) -> VmApi:
    return make_api(view, liveliness)


def test_starting_answers_410_with_retry_after() -> None:
    api = VmApi()
    resp = answer(api, f"/metadata/instance?api-version={V}")
    assert resp.status == 410
    assert dict(resp.headers)["Retry-After"] == "5"
    assert resp.refused == "starting"


def test_unknown_caller_gets_403_and_nothing_else(api: VmApi) -> None:
    for target in (f"/metadata/instance?api-version={V}", "/metadata/versions", "/nowhere"):
        resp = answer(api, target, caller="10.9.9.9")
        assert resp.status == 403
        assert body(resp) == {"error": "Forbidden"}
        assert resp.vm is None


def test_instance_whole_document(api: VmApi) -> None:
    resp = answer(api, f"/metadata/instance?api-version={V}")
    assert resp.status == 200
    assert resp.content_type.startswith("application/json")
    doc = body(resp)
    assert set(doc) == {"compute", "network"}
    assert doc["compute"]["vmId"] == VM_A
    assert doc["compute"]["platformFaultDomain"] == "0"  # every primitive a string
    assert doc["network"]["interface"][0]["macAddress"] == "000D3AF806E0"


def test_caller_sees_only_its_vm(api: VmApi) -> None:
    a = body(answer(api, f"/metadata/instance?api-version={V}", caller=CALLER_A))
    b = body(answer(api, f"/metadata/instance?api-version={V}", caller=CALLER_B))
    assert a["compute"]["name"] == "vm-a-name"
    assert b["compute"]["name"] == "vm-b-name"
    # No header or parameter selects another VM.
    sneaky = answer(api, f"/metadata/instance?api-version={V}&vmId=vm-b",
                    headers={**MD, "X-Vm-Id": "vm-b", "Host": "vm-b"})
    assert body(sneaky)["compute"]["name"] == "vm-a-name"


def test_sub_paths_walk_keys_and_indexes(api: VmApi) -> None:
    resp = answer(api, "/metadata/instance/network/interface/0/ipv4/ipAddress/0/"
                       f"privateIpAddress?api-version={V}&format=text")
    assert (resp.status, resp.body, resp.content_type.split(";")[0]) == \
        (200, b"10.0.0.4", "text/plain")
    assert body(answer(api, f"/metadata/instance/compute/plan?api-version={V}")) == \
        {"name": "", "product": "", "publisher": ""}
    assert answer(api, f"/metadata/instance/compute/?api-version={V}").status == 200


@pytest.mark.parametrize("path", ["compute/nope", "network/interface/7", "network/interface/x",
                                  "compute//name", "scheduledevents",
                                  "network/interface/%C2%B2"])  # "²": a digit, not an index
def test_missing_element_is_404(api: VmApi, path: str) -> None:
    resp = answer(api, f"/metadata/instance/{path}?api-version={V}&format=text")
    assert resp.status == 404
    assert "error" in body(resp)


def test_leaf_rule(api: VmApi) -> None:
    assert answer(api, f"/metadata/instance/compute/name?api-version={V}").status == 400
    assert answer(api, f"/metadata/instance/compute/name?api-version={V}&format=json"
                  ).status == 400
    assert answer(api, f"/metadata/instance/compute?api-version={V}&format=text").status == 400
    leaf = answer(api, f"/metadata/instance/compute/name?api-version={V}&format=text")
    assert leaf.body == b"vm-a-name"
    assert answer(api, f"/metadata/instance?api-version={V}&format=xml").status == 400


def test_metadata_header_required_and_case_insensitive(api: VmApi) -> None:
    target = f"/metadata/instance?api-version={V}"
    for headers in ({}, {"Metadata": "false"}, {"Metadata": "yes"}):
        resp = answer(api, target, headers=headers)
        assert resp.status == 400
        assert body(resp) == {"error": "Bad request. Required metadata header not specified"}
    for value in ("true", "True", "TRUE"):
        assert answer(api, target, headers={"Metadata": value}).status == 200
    assert answer(api, "/metadata/versions", headers={}).status == 200


def test_forwarded_requests_refused(api: VmApi) -> None:
    resp = answer(api, f"/metadata/instance?api-version={V}",
                  headers={**MD, "X-Forwarded-For": "1.2.3.4"})
    assert resp.status == 400
    assert resp.refused == "forwarded"


@pytest.mark.parametrize("query", ["", "?api-version=", "?api-version=2017-01-01",
                                   "?api-version=latest", "?format=json"])
def test_bad_or_missing_api_version_lists_three_newest(api: VmApi, query: str) -> None:
    resp = answer(api, f"/metadata/instance{query}")
    assert resp.status == 400
    assert body(resp) == {
        "error": "Bad request. api-version is invalid or was not specified in the request. "
                 "For more information refer to aka.ms/azureimds",
        "newest-versions": ["2025-04-07", "2024-07-17", "2024-03-15"]}
    assert list(NEWEST_THREE) == body(resp)["newest-versions"]


def test_versions_endpoint(api: VmApi) -> None:
    resp = answer(api, "/metadata/versions")
    assert body(resp) == {"apiVersions": list(VERSIONS)}
    assert len(VERSIONS) == 35


def test_duplicate_query_parameter_refused_unknown_tolerated(api: VmApi) -> None:
    assert answer(api, f"/metadata/instance?api-version={V}&api-version={V}").status == 400
    assert answer(api, f"/metadata/instance?api-version={V}&format=json&format=json"
                  ).status == 400
    assert answer(api, f"/metadata/instance?api-version={V}&extended=true").status == 200


def test_method_rules(api: VmApi) -> None:
    for method in ("PUT", "DELETE", "PATCH", "POST"):
        resp = answer(api, f"/metadata/instance?api-version={V}", method=method)
        assert resp.status == 405
        assert dict(resp.headers)["Allow"] == "GET, HEAD"
    assert answer(api, f"/metadata/instance?api-version={V}", method="HEAD").status == 200
    assert answer(api, "/metadata/scheduledevents?api-version=2020-07-01",
                  method="DELETE").status == 405


@pytest.mark.parametrize("path", ["/", "/metadata", "/metadata/nope", "/latest/meta-data",
                                  "/metadata/versions/extra", "relative"])
def test_unknown_paths_404(api: VmApi, path: str) -> None:
    assert answer(api, f"{path}?api-version={V}").status == 404


def test_guest_endpoints_without_data_answer_what_clients_expect(api: VmApi) -> None:
    # No signer configured: 404 saying so. No identity: 400 (never 404, which SDKs retry
    # for ~24 s). No load balancer: Azure's 404 message.
    attested = answer(api, f"/metadata/attested/document?api-version={V}")
    assert attested.status == 404
    assert "not configured" in body(attested)["error"]
    token = answer(api, "/metadata/identity/oauth2/token?api-version=2018-02-01"
                   "&resource=https://management.azure.com/")
    assert token.status == 400
    assert body(token) == {"error": "invalid_request", "error_description": "Identity not found"}
    lb = answer(api, "/metadata/loadbalancer?api-version=2020-10-01")
    assert lb.status == 404
    assert body(lb)["error"].startswith("No load balancer metadata is found.")
    for resp in (attested, token, lb):
        assert "Retry-After" not in dict(resp.headers)


def test_field_gating_by_version(api: VmApi) -> None:
    old = body(answer(api, "/metadata/instance/compute?api-version=2017-08-01"))
    assert "tags" in old
    assert "tagsList" not in old
    assert "userData" not in old
    assert "zone" not in old
    assert "plan" not in old
    mid = body(answer(api, "/metadata/instance/compute?api-version=2021-01-01"))
    assert "userData" in mid
    assert "tagsList" in mid
    assert "platformSubFaultDomain" not in mid
    assert set(mid["securityProfile"]) == {"secureBootEnabled", "virtualTpmEnabled"}
    new = body(answer(api, "/metadata/instance/compute?api-version=2025-04-07"))
    assert {"encryptionAtHost", "securityType"} <= set(new["securityProfile"])
    assert "physicalZone" in new
    assert new["host"] == {"id": ""}
    assert answer(api, "/metadata/instance/compute/userData?api-version=2020-12-01"
                  "&format=text").status == 404


def test_missing_values_are_empty_strings(view: View, liveliness: LivelinessTracker) -> None:
    view.apply(Event("fabric", ("vms", VM_A, "compute"), 11, {"name": "bare", "zone": 3}))
    api = make_api(view, liveliness)
    compute = body(answer(api, "/metadata/instance/compute?api-version=2025-04-07"))
    assert compute["name"] == "bare"
    assert compute["zone"] == "3"
    assert compute["location"] == ""
    assert compute["plan"] == {"name": "", "product": "", "publisher": ""}
    assert compute["publicKeys"] == []


def test_tags_and_tags_list_render_one_set(view: View, liveliness: LivelinessTracker) -> None:
    api = make_api(view, liveliness)
    compute = body(answer(api, f"/metadata/instance/compute?api-version={V}"))
    assert compute["tags"] == "owner:vm-a-name;env:test"
    assert compute["tagsList"] == [{"name": "owner", "value": "vm-a-name"},
                                   {"name": "env", "value": "test"}]
    # A newer tagsList (the form that survives ';' and ':') wins over the older string.
    view.apply(Event("tags", ("vms", VM_A, "compute", "tagsList"), 12,
                     [{"name": "a;b", "value": "c:d"}]))
    compute = body(answer(api, f"/metadata/instance/compute?api-version={V}"))
    assert compute["tagsList"] == [{"name": "a;b", "value": "c:d"}]
    assert compute["tags"] == "a;b:c:d"


def test_scheduled_events_render_and_incarnation(view: View,
                                                 liveliness: LivelinessTracker) -> None:
    api = make_api(view, liveliness)
    doc = body(answer(api, "/metadata/scheduledevents?api-version=2020-07-01"))
    assert doc["DocumentIncarnation"] == 20
    [event] = doc["Events"]
    assert event["EventId"] == EVENT_ID
    assert event["EventType"] == "Reboot"
    assert event["ResourceType"] == "VirtualMachine"
    assert event["DurationInSeconds"] == -1
    view.apply(Event("fabric", ("vms", VM_A, "scheduledevents", EVENT_ID), 25, None,
                     deleted=True))
    doc = body(answer(api, "/metadata/scheduledevents?api-version=2020-07-01"))
    assert doc == {"DocumentIncarnation": 25, "Events": []}
    other = body(answer(api, "/metadata/scheduledevents?api-version=2020-07-01",
                        caller=CALLER_B))
    assert other == {"DocumentIncarnation": 0, "Events": []}


def test_scheduled_events_approval_is_a_submit(api: VmApi) -> None:
    payload = json.dumps({"StartRequests": [{"EventId": EVENT_ID}]}).encode()
    result = call(api, "/metadata/scheduledevents?api-version=2020-07-01", method="POST",
                  body=payload)
    assert isinstance(result, Submit)
    assert result.source == "guest"
    [event] = result.events
    assert event["key"] == ["vms", VM_A, "approvals", EVENT_ID]
    assert event["value"]["approved"] is True
    assert result.response.status == 200


@pytest.mark.parametrize("payload", [b"", b"{", b"[]", b'{"StartRequests": 1}',
                                     b'{"StartRequests": [{"EventId": "nope"}]}',
                                     b'{"StartRequests": [{}]}', b'{"StartRequests": []}'])
def test_bad_approvals_400(api: VmApi, payload: bytes) -> None:
    resp = call(api, "/metadata/scheduledevents?api-version=2020-07-01", method="POST",
                body=payload)
    assert isinstance(resp, Response)
    assert resp.status == 400


def test_another_vms_event_cannot_be_approved(api: VmApi) -> None:
    payload = json.dumps({"StartRequests": [{"EventId": EVENT_ID}]}).encode()
    resp = call(api, "/metadata/scheduledevents?api-version=2020-07-01", method="POST",
                body=payload, caller=CALLER_B)
    assert isinstance(resp, Response)
    assert resp.status == 400


def test_rate_limit_per_vm(view: View, liveliness: LivelinessTracker) -> None:
    api = make_api(view, liveliness, rate_limit=5)
    target = f"/metadata/instance?api-version={V}"
    statuses = [answer(api, target, now=NOW).status for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    limited = answer(api, target, now=NOW)
    assert dict(limited.headers)["Retry-After"] == "1"
    assert "error" in body(limited)
    assert answer(api, target, caller=CALLER_B, now=NOW).status == 200  # another VM
    assert answer(api, target, now=NOW + 0.2).status == 200  # one token refilled
    assert answer(api, target, now=NOW + 0.2).status == 429


def test_etag_and_if_none_match(api: VmApi) -> None:
    target = f"/metadata/instance/compute?api-version={V}"
    first = answer(api, target)
    etag = dict(first.headers)["ETag"]
    assert etag.startswith('"')
    assert etag.endswith('"')
    again = answer(api, target, headers={**MD, "If-None-Match": etag})
    assert (again.status, again.body) == (304, b"")
    assert dict(again.headers)["ETag"] == etag
    assert answer(api, target, headers={**MD, "If-None-Match": '"other"'}).status == 200
    assert answer(api, target, headers={**MD, "If-None-Match": "*"}).status == 304


def test_etag_is_content_hash_equal_across_replicas(view: View,
                                                    liveliness: LivelinessTracker) -> None:
    target = f"/metadata/instance?api-version={V}"
    other = View()
    for event in reversed(list(view.registers())):
        other.apply(event)
    a = answer(make_api(view, liveliness), target)
    b = answer(make_api(other, liveliness), target)
    assert a.etag == b.etag
    assert a.body == b.body


def test_watch_parks_when_etag_current(api: VmApi) -> None:
    target = f"/metadata/instance/compute/name?api-version={V}&format=text"
    etag = answer(api, target).etag
    parked = call(api, f"{target}&wait_for_change=true&last_etag={etag}&timeout_sec=30")
    assert isinstance(parked, Park)
    assert parked.timeout == 30
    assert api.parked == 1
    # Nothing changed: resuming keeps it parked; on timeout it answers the value.
    assert api.resume(parked, NOW + 1, timed_out=False) is parked
    done = api.resume(parked, NOW + 30, timed_out=True)
    assert isinstance(done, Response)
    assert done.body == b"vm-a-name"
    assert done.watch
    api.release(parked)
    assert api.parked == 0


def test_watch_answers_at_once_when_etag_differs(api: VmApi) -> None:
    target = f"/metadata/instance/compute/name?api-version={V}&format=text"
    resp = call(api, f"{target}&wait_for_change=true&last_etag=stale")
    assert isinstance(resp, Response)
    assert resp.status == 200


def test_watch_wakes_on_change_of_the_value(view: View, liveliness: LivelinessTracker) -> None:
    api = make_api(view, liveliness)
    target = f"/metadata/instance/compute/name?api-version={V}&format=text&wait_for_change=true"
    parked = call(api, target)
    assert isinstance(parked, Park)
    view.apply(Event("tags", ("vms", VM_A, "compute", "tags"), 30, "x:y"))  # not the name
    assert api.resume(parked, NOW, timed_out=False) is parked
    view.apply(Event("fabric", ("vms", VM_A, "compute", "name"), 30, "renamed"))
    done = api.resume(parked, NOW, timed_out=False)
    assert isinstance(done, Response)
    assert done.body == b"renamed"


def test_watch_limits(view: View, liveliness: LivelinessTracker) -> None:
    api = make_api(view, liveliness, max_watchers_per_vm=2, max_watch_timeout=10)
    target = f"/metadata/instance?api-version={V}&wait_for_change=true&timeout_sec=999"
    first = call(api, target)
    assert isinstance(first, Park)
    assert first.timeout == 10
    assert isinstance(call(api, target), Park)
    refused = call(api, target)
    assert isinstance(refused, Response)
    assert refused.status == 429
    assert isinstance(call(api, target, caller=CALLER_B), Park)  # per VM
    for bad in ("timeout_sec=-1", "timeout_sec=abc"):
        resp = call(api, f"/metadata/instance?api-version={V}&wait_for_change=true&{bad}")
        assert isinstance(resp, Response)
        assert resp.status == 400
    resp = call(api, f"/metadata/instance?api-version={V}&wait_for_change=maybe")
    assert isinstance(resp, Response)
    assert resp.status == 400


def test_a_huge_timeout_sec_is_clamped_not_an_error(api: VmApi) -> None:
    # Too large for a float: still a non-negative integer, so the maximum applies.
    parked = call(api, f"/metadata/instance?api-version={V}&wait_for_change=true"
                       f"&timeout_sec={'9' * 400}")
    assert isinstance(parked, Park)
    assert parked.timeout == api.policy.max_watch_timeout


def test_parked_watcher_does_not_consume_rate_limit(view: View,
                                                    liveliness: LivelinessTracker) -> None:
    api = make_api(view, liveliness, rate_limit=1)
    parked = call(api, f"/metadata/instance?api-version={V}&wait_for_change=true")
    assert isinstance(parked, Park)
    for i in range(5):  # wake-ups while waiting are free
        assert api.resume(parked, NOW + 0.01 * i, timed_out=False) is parked
    assert isinstance(api.resume(parked, NOW + 0.1, timed_out=True), Response)
    assert api.stats.rate_limited == 0


def test_watch_of_reassigned_caller_is_refused(view: View,
                                               liveliness: LivelinessTracker) -> None:
    api = make_api(view, liveliness)
    parked = call(api, f"/metadata/instance?api-version={V}&wait_for_change=true")
    assert isinstance(parked, Park)
    view.apply(Event("hostnet", ("callers", CALLER_A), 2, "vm-b"))
    resp = api.resume(parked, NOW, timed_out=False)
    assert isinstance(resp, Response)
    assert resp.status == 403


def test_freshness_headers(view: View, liveliness: LivelinessTracker) -> None:
    api = make_api(view, liveliness)
    resp = answer(api, f"/metadata/instance?api-version={V}", now=1042.5)
    headers = dict(resp.headers)
    # tags (polled, last contact at 1000) is the least fresh; fabric is pushed (always live).
    assert headers["Age"] == "42"
    assert headers["Imds-Freshness"] == "tags;state=live;age=42, fabric;state=live;age=0"
    later = dict(answer(api, f"/metadata/instance?api-version={V}", now=1200.0).headers)
    assert later["Imds-Freshness"].startswith("tags;state=stale;age=200")


def test_cache_hit_then_invalidated_by_change(view: View, liveliness: LivelinessTracker) -> None:
    api = make_api(view, liveliness)
    target = f"/metadata/instance/compute/name?api-version={V}&format=text"
    answer(api, target)
    answer(api, target)
    assert api.cache is not None
    assert (api.cache.hits, api.cache.misses) == (1, 1)
    view.apply(Event("fabric", ("vms", VM_A, "compute", "name"), 40, "new"))
    assert answer(api, target).body == b"new"
    assert api.cache.misses == 2


def test_versions_2017_03_01_predates_every_field(api: VmApi) -> None:
    doc = body(answer(api, "/metadata/instance?api-version=2017-03-01"))
    assert doc == {"compute": {}, "network": {}}


def test_a_cached_read_reuses_its_response_until_age_or_data_change(
        api: VmApi, view: View) -> None:
    target = f"/metadata/instance/compute/name?api-version={V}&format=text"
    first = answer(api, target)
    assert answer(api, target) is first  # same answer, same second: nothing rebuilt
    assert answer(api, target, now=NOW + 0.5) is first
    later = answer(api, target, now=NOW + 1)  # a new second: Age is recomputed
    assert later is not first
    assert later.body == first.body
    etag = first.headers[0][1]
    not_modified = answer(api, target, headers={**MD, "If-None-Match": etag}, now=NOW + 1)
    assert not_modified.status == 304
    assert answer(api, target, now=NOW + 1) is later  # the 304 did not replace it
    view.apply(Event("fabric", ("vms", VM_A, "compute", "name"), 99, "renamed"))
    renamed = answer(api, target, now=NOW + 1)
    assert renamed.body == b"renamed"
    assert renamed.etag != first.etag


def test_parsed_targets_are_remembered_but_bounded(api: VmApi) -> None:
    for i in range(1100):  # more distinct targets than the memo keeps
        resp = answer(api, f"/metadata/instance/compute/name?api-version={V}&format=text"
                           f"&extra={i}")
        assert resp.body == b"vm-a-name"
    assert len(api._targets) <= 1024
    assert answer(api, f"/metadata/instance?api-version={V}&x=1&x=2").status == 400


def test_library_errors_carry_retry_after_when_due() -> None:
    assert dict(failure(Unavailable("busy", retry_after=3)).headers) == {"Retry-After": "3"}
    assert dict(failure(ImdsError("overloaded", status=503)).headers) == {"Retry-After": "1"}
    assert failure(StorageError("disk on fire")).headers == ()
    invalid = failure(ValidationError("bad source", index=2), extra={"index": 2})
    assert (invalid.status, body(invalid)["index"]) == (400, 2)
    assert "bad source" in body(invalid)["error"]


# -- issue 14 finding 7: the answer cache keys on the request's segments as given --------
def test_an_escaped_slash_does_not_poison_the_real_paths_cached_answer(api: VmApi) -> None:
    real = f"/metadata/instance/compute/name?api-version={V}&format=text"
    escaped = f"/metadata/instance/compute%2Fname?api-version={V}&format=text"
    assert answer(api, escaped).status == 404  # one segment "compute/name": no such field
    resp = answer(api, real)
    assert (resp.status, resp.body) == (200, b"vm-a-name")
    assert answer(api, escaped).status == 404  # and the other way round
    assert answer(api, real).body == b"vm-a-name"


# -- issue 14 finding 11: timeout_sec is ASCII digits only ---------------------------------
@pytest.mark.parametrize("value", ["2_0", " 2", "2 ", "+2", "-0", "\u0662", "", "1e3", "0x10"])
def test_timeout_sec_must_be_ascii_digits(api: VmApi, value: str) -> None:
    from urllib.parse import quote

    resp = answer(api, f"/metadata/instance?api-version={V}&wait_for_change=true"
                       f"&timeout_sec={quote(value)}")
    assert resp.status == 400
    assert "timeout_sec" in body(resp)["error"]


def test_timeout_sec_digits_are_accepted(api: VmApi) -> None:
    parked = call(api, f"/metadata/instance?api-version={V}&wait_for_change=true"
                       "&timeout_sec=007")
    assert isinstance(parked, Park)
    assert parked.timeout == 7.0


# -- issue 17: a 403 for an unknown caller is counted under its route ----------------------
@pytest.mark.parametrize(("target", "route", "version"), [
    (f"/metadata/instance?api-version={V}", "/metadata/instance", V),
    (f"/metadata/instance/compute/name?api-version={V}&format=text", "/metadata/instance", V),
    ("/metadata/scheduledevents?api-version=2020-07-01", "/metadata/scheduledevents",
     "2020-07-01"),
    ("/metadata/versions", "/metadata/versions", None),
    ("/nowhere", "other", None),
])
def test_unknown_caller_403_names_its_route_and_api_version(
        api: VmApi, target: str, route: str, version: str | None) -> None:
    resp = answer(api, target, caller="127.0.0.99")
    assert (resp.status, resp.refused) == (403, "unknown-caller")
    assert (resp.route, resp.api_version) == (route, version)
