"""The identity endpoints through ``VmApi.handle`` (no sockets): the wire reference's
request and answer, the OAuth error shape, 400 (never 404) for a missing identity, and
the identity limits."""

from __future__ import annotations

import json
from typing import Any

import pytest

from imds_replica import LivelinessTracker, View
from imds_server import ApiPolicy, Response, VmApi
from imds_server._guest import answer_issue
from imds_server.identity import IdentityPolicy, Issue, TokenCache

from ..conftest import CALLER_A, CALLER_B, MD, VM_A
from .conftest import RESOURCE, SYSTEM, TOKEN, USER1, USER1_ID, USER2, FakeIssuer, identity_fleet

NOW = 1_800_000_000.0


def make(policy: IdentityPolicy | None = None, **fleet: Any) -> tuple[VmApi, FakeIssuer]:
    view = View()
    for event in identity_fleet(**fleet):
        view.apply(event)
    tracker = LivelinessTracker()
    api = VmApi(ApiPolicy(rate_limit=5), started=NOW,
                identity=policy or IdentityPolicy(rate_limit=0, max_concurrent=0))
    api.attach(view, tracker)
    issuer = FakeIssuer()
    api.identity.tokens = TokenCache(issuer)
    return api, issuer


async def call(api: VmApi, target: str, *, headers: dict[str, str] | None = None,
               caller: str = CALLER_A, method: str = "GET", now: float = NOW) -> Response:
    hdrs = {k.lower(): v for k, v in (MD if headers is None else headers).items()}
    from imds_server import Request

    result = api.handle(Request(method, target, hdrs), caller, now)
    if isinstance(result, Issue):
        return await answer_issue(api.identity, result, lambda: now)
    assert isinstance(result, Response), result
    return result


def body(resp: Response) -> Any:
    return json.loads(resp.body)


async def test_token_answer_every_value_a_string_resource_echoed() -> None:
    api, issuer = make()
    resp = await call(api, f"{TOKEN}&resource={RESOURCE}")
    assert resp.status == 200, resp.body
    doc = body(resp)
    assert set(doc) == {"access_token", "refresh_token", "expires_in", "expires_on",
                        "ext_expires_in", "not_before", "resource", "token_type"}
    assert all(isinstance(v, str) for v in doc.values())
    assert doc["resource"] == RESOURCE
    assert doc["token_type"] == "Bearer"
    assert doc["refresh_token"] == ""
    assert int(doc["expires_on"]) - int(NOW) == int(doc["expires_in"]) == 7200
    claims = await _claims(issuer, doc["access_token"], RESOURCE)
    assert claims["oid"] == SYSTEM["objectId"]  # no selector: the system-assigned one
    assert resp.route == "/metadata/identity/oauth2/token"
    assert resp.vm == VM_A


async def _claims(issuer: FakeIssuer, token: str, aud: str) -> dict[str, Any]:
    from imds_server.identity.testing import verify

    return await verify(issuer, token, aud)


@pytest.mark.parametrize(("selector", "value", "expected"), [
    ("client_id", USER1["clientId"], USER1),
    ("client_id", USER1["clientId"].upper(), USER1),
    ("object_id", USER2["objectId"], USER2),
    ("msi_res_id", USER1_ID, USER1),
    ("mi_res_id", USER1_ID, USER1),
    ("client_id", SYSTEM["clientId"], SYSTEM),
])
async def test_user_assigned_identity_by_selector(selector: str, value: str,
                                                  expected: dict[str, str]) -> None:
    api, issuer = make()
    resp = await call(api, f"{TOKEN}&resource={RESOURCE}&{selector}={value}")
    assert resp.status == 200, resp.body
    doc = body(resp)
    claims = await _claims(issuer, doc["access_token"], RESOURCE)
    assert claims["oid"] == expected["objectId"]
    assert claims["appid"] == expected["clientId"]
    if selector == "client_id":
        assert doc["client_id"] == value  # echoed as asked
    else:
        assert "client_id" not in doc


async def test_xms_mirid_is_the_identity_resource_id() -> None:
    api, issuer = make()
    user = body(await call(api, f"{TOKEN}&resource={RESOURCE}&msi_res_id={USER1_ID}"))
    assert (await _claims(issuer, user["access_token"], RESOURCE))["xms_mirid"] == USER1_ID
    system = body(await call(api, f"{TOKEN}&resource={RESOURCE}"))
    mirid = (await _claims(issuer, system["access_token"], RESOURCE))["xms_mirid"]
    assert mirid.endswith("/providers/Microsoft.Compute/virtualMachines/vm-a-name")


def _oauth(resp: Response, status: int, description: str) -> None:
    assert resp.status == status, resp.body
    assert body(resp) == {"error": "invalid_request", "error_description": description}
    assert resp.content_type.startswith("application/json")
    assert "Retry-After" not in dict(resp.headers)


async def test_no_identity_is_400_identity_not_found_never_404() -> None:
    api, _ = make()
    _oauth(await call(api, f"{TOKEN}&resource={RESOURCE}", caller=CALLER_B), 400,
           "Identity not found")
    _oauth(await call(api, "/metadata/identity/info?api-version=2018-02-01",
                      caller=CALLER_B), 400, "Identity not found")


@pytest.mark.parametrize("query", ["client_id=nobody", "object_id=nobody",
                                   "msi_res_id=/subscriptions/x/nope",
                                   "msi_res_id=/subscriptions/sub/resourceGroups/rg/x"])
async def test_identity_the_vm_does_not_have_is_400(query: str) -> None:
    api, _ = make()
    _oauth(await call(api, f"{TOKEN}&resource={RESOURCE}&{query}"), 400, "Identity not found")


async def test_several_user_identities_and_no_system_need_a_selector() -> None:
    api, _ = make(system=False)
    resp = await call(api, f"{TOKEN}&resource={RESOURCE}")
    assert resp.status == 400
    assert "Multiple user assigned identities" in body(resp)["error_description"]
    single, _ = make(system=False, users=(("/one", USER1),))
    assert (await call(single, f"{TOKEN}&resource={RESOURCE}")).status == 200


async def test_request_faults_in_oauth_shape() -> None:
    api, _ = make()
    _oauth(await call(api, f"{TOKEN}&resource={RESOURCE}", headers={}), 400,
           "Required metadata header not specified")
    _oauth(await call(api, TOKEN), 400, "Required audience parameter not specified")
    resp = await call(api, f"{TOKEN}&resource={RESOURCE}&client_id=a&object_id=b")
    assert resp.status == 400
    assert body(resp)["error"] == "invalid_request"
    resp = await call(api, f"/metadata/identity/oauth2/token?resource={RESOURCE}")
    assert resp.status == 400
    assert "api-version" in body(resp)["error_description"]
    resp = await call(api, f"{TOKEN}&resource={RESOURCE}", headers={**MD,
                                                                    "X-Forwarded-For": "1.2.3.4"})
    assert resp.status == 400
    resp = await call(api, f"{TOKEN}&resource={RESOURCE}", method="POST")
    assert resp.status == 405
    resp = await call(api, f"{TOKEN}&resource={RESOURCE}&resource=again")
    assert resp.status == 400


async def test_info_answers_the_tenant() -> None:
    api, _ = make()
    resp = await call(api, "/metadata/identity/info?api-version=2018-02-01")
    assert resp.status == 200
    assert body(resp) == {"tenantId": SYSTEM["tenantId"]}


async def test_identities_never_appear_in_the_instance_document() -> None:
    api, _ = make()
    resp = await call(api, "/metadata/instance?api-version=2021-02-01")
    assert resp.status == 200
    text = resp.body.decode()
    assert "identity" not in json.loads(text)
    assert SYSTEM["clientId"] not in text
    assert USER1["objectId"] not in text


async def test_cached_token_counts_down_and_is_not_reissued() -> None:
    api, issuer = make()
    first = body(await call(api, f"{TOKEN}&resource={RESOURCE}"))
    later = body(await call(api, f"{TOKEN}&resource={RESOURCE}", now=NOW + 100))
    assert later["access_token"] == first["access_token"]
    assert int(later["expires_in"]) == int(first["expires_in"]) - 100
    assert issuer.calls == 1
    assert api.identity.stats.cached == 1


async def test_failing_issuer_is_500_and_cached_tokens_keep_being_served() -> None:
    api, issuer = make()
    issuer.failing = True
    resp = await call(api, f"{TOKEN}&resource={RESOURCE}")
    assert resp.status == 500
    assert body(resp)["error"] == "unknown_error"
    assert "Retry-After" not in dict(resp.headers)
    issuer.failing = False
    good = body(await call(api, f"{TOKEN}&resource={RESOURCE}"))
    issuer.failing = True
    # Past half-life (the cache asks the issuer again, which fails): the usable token.
    again = await call(api, f"{TOKEN}&resource={RESOURCE}", now=NOW + 5000)
    assert again.status == 200
    assert body(again)["access_token"] == good["access_token"]


async def test_rate_limit_is_the_identity_one_with_the_observed_429() -> None:
    api, _ = make(IdentityPolicy(rate_limit=20, max_concurrent=0))
    statuses = [(await call(api, f"{TOKEN}&resource={RESOURCE}")).status for _ in range(20)]
    assert statuses == [200] * 20  # 20/s, not the general API's 5/s
    limited = await call(api, f"{TOKEN}&resource={RESOURCE}")
    assert limited.status == 429
    assert body(limited) == {"error": "invalid_request",
                             "error_description": "Temporarily throttled, too many requests"}
    assert dict(limited.headers)["Retry-After"] == "1"
    assert limited.refused == "rate-limited"
    # The general API's bucket is untouched by identity traffic.
    assert (await call(api, "/metadata/instance?api-version=2021-02-01")).status == 200


async def test_concurrency_limit_per_vm() -> None:
    from imds_server import Request

    api, _ = make(IdentityPolicy(rate_limit=0, max_concurrent=2))
    issues = []
    for i in range(3):
        result = api.handle(Request("GET", f"{TOKEN}&resource=https://r{i}", {"metadata": "true"}),
                            CALLER_A, NOW)
        issues.append(result)
    assert isinstance(issues[0], Issue)
    assert isinstance(issues[1], Issue)
    third = issues[2]
    assert isinstance(third, Response)
    assert third.status == 429
    api.identity.release(issues[0])
    result = api.handle(Request("GET", f"{TOKEN}&resource=https://r9", {"metadata": "true"}),
                        CALLER_A, NOW)
    assert isinstance(result, Issue)
