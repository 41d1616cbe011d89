"""The managed-identity endpoints as a pure handler, beside ``VmApi``.

``GET /metadata/identity/oauth2/token`` and ``GET /metadata/identity/info``, exactly as the
wire reference describes them: every value of an answer a string, ``resource`` echoed,
errors in the OAuth shape ``{"error", "error_description"}``, and **400** ``Identity not
found`` (never 404: every SDK retries a 404 for ~24 s) when the VM has no identity or not
the one asked for. Limits are the identity ones (per VM: requests/s and concurrent
requests), not the general API's.

A cached token is answered here at once; otherwise the handler asks its shell to
``Issue`` (the issuer is I/O) and the shell calls ``answer_issue`` with the outcome.
Which identities a VM has is replicated data:
``("vms", VM, "identity", "systemAssigned")`` and
``("vms", VM, "identity", "userAssigned", RESOURCE_ID)``, each
``{"clientId", "objectId", "tenantId"}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from imds_replica import ConfigError, View

from .._ratelimit import TokenBuckets
from .._request import JSON, BadQuery, Request, Response, parse_query
from .._versions import is_known
from ._cache import TokenCache, cache_key
from ._port import SYSTEM_ASSIGNED, USER_ASSIGNED, Identity, IssuedToken, TokenRequest

PREFIX = "/metadata/identity"
TOKEN_ROUTE = "/metadata/identity/oauth2/token"
INFO_ROUTE = "/metadata/identity/info"
NOT_FOUND = "Identity not found"
THROTTLED = "Temporarily throttled, too many requests"
SELECTORS = ("client_id", "object_id", "msi_res_id", "mi_res_id")


@attrs.frozen
class IdentityPolicy:
    """Identity limits per VM (Azure's: 20 requests/s, 5 concurrent); 0 disables."""

    rate_limit: float = 20.0
    rate_burst: float | None = None
    max_concurrent: int = 5

    def __attrs_post_init__(self) -> None:
        if self.rate_limit < 0:
            raise ConfigError("must be >= 0", key="identity-rate-limit")
        if self.max_concurrent < 0:
            raise ConfigError("must be >= 0", key="identity-max-concurrent")


@attrs.define
class IdentityStatistics:
    requests: int = 0
    tokens: int = 0  # 200 answers
    cached: int = 0  # of which answered from the cache without asking the issuer
    not_found: int = 0
    rate_limited: int = 0
    issuer_errors: int = 0
    #: 4xx answers by their refusal reason (``Response.refused``; ``other`` for 404/405):
    #: ``rate-limited`` and ``no-identity`` among them.
    refused: dict[str, int] = attrs.field(factory=dict)


@attrs.frozen(slots=True, eq=False)
class Issue:
    """Ask the shell to get a token (``IdentityEndpoint.obtain``), then call
    ``IdentityEndpoint.answer_issue`` and ``release``."""

    request: TokenRequest
    echo_client_id: str | None
    api_version: str


def oauth_error(status: int, error: str, description: str, *, vm: str | None = None,
                api_version: str | None = None, refused: str | None = None,
                route: str = TOKEN_ROUTE,
                headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps({"error": error, "error_description": description}).encode()
    return Response(status, body, JSON, headers, route=route, refused=refused, vm=vm,
                    api_version=api_version)


class IdentityEndpoint:
    """Sans-I/O handling of ``/metadata/identity/...`` for a caller already known as
    ``vm``. ``tokens`` (the cache over the issuer) is set by the server."""

    def __init__(self, policy: IdentityPolicy | None = None) -> None:
        self.policy = policy or IdentityPolicy()
        self.view: View | None = None
        self.tokens: TokenCache | None = None
        self.buckets = TokenBuckets(self.policy.rate_limit, self.policy.rate_burst)
        self.stats = IdentityStatistics()
        self._in_flight: dict[str, int] = {}
        self._memo: dict[str, tuple[int, list[Identity]]] = {}

    def handle(self, request: Request, vm: str, now: float) -> Response | Issue:
        result = self._handle(request, vm, now)
        if isinstance(result, Response) and 400 <= result.status < 500:
            reason = result.refused or "other"
            self.stats.refused[reason] = self.stats.refused.get(reason, 0) + 1
        return result

    def _handle(self, request: Request, vm: str, now: float) -> Response | Issue:
        self.stats.requests += 1
        path = request.path.rstrip("/")
        route = path if path in (TOKEN_ROUTE, INFO_ROUTE) else "other"
        wait = self.buckets.take(vm, now)
        if wait:  # the limits come first, as on the rest of the API
            self.stats.rate_limited += 1
            return self._throttled(vm, None, route, wait)
        try:
            params = parse_query(request.query_string)
        except BadQuery as exc:
            return oauth_error(400, "invalid_request", f"Bad request. {exc}", vm=vm,
                               route=route, refused="bad-request")
        version = params.get("api-version")

        def bad(description: str, refused: str = "bad-request") -> Response:
            return oauth_error(400, "invalid_request", description, vm=vm,
                               api_version=version, route=route, refused=refused)

        if "x-forwarded-for" in request.headers:
            return bad("Bad request. Relayed requests (X-Forwarded-For) are refused",
                       "forwarded")
        if request.headers.get("metadata", "").lower() != "true":
            return bad("Required metadata header not specified", "no-metadata-header")
        if route == "other":
            return oauth_error(404, "not_found", "Not found", vm=vm, api_version=version,
                               route=route)
        if request.method != "GET":
            resp = oauth_error(405, "invalid_request", f"Method {request.method} not allowed",
                               vm=vm, api_version=version, route=route)
            return attrs.evolve(resp, headers=(("Allow", "GET"),))
        if not is_known(version):
            return bad("Bad request. api-version is invalid or was not specified in the "
                       "request. For more information refer to aka.ms/azureimds",
                       "bad-api-version")
        assert version is not None
        identities = self.identities(vm)
        if route == INFO_ROUTE:
            if not identities:
                self.stats.not_found += 1
                return bad(NOT_FOUND, "no-identity")
            body = json.dumps({"tenantId": identities[0].tenant_id}).encode()
            return Response(200, body, JSON, route=route, vm=vm, api_version=version)
        resource = params.get("resource", "")
        if not resource:
            return bad("Required audience parameter not specified")
        chosen = [name for name in SELECTORS if params.get(name)]
        if len(chosen) > 1:
            return bad(f"Bad request. Only one of {', '.join(chosen)} may be given")
        selected = _select(identities, chosen[0] if chosen else None,
                           params.get(chosen[0], "") if chosen else "")
        if isinstance(selected, str):
            self.stats.not_found += 1
            return bad(selected, "no-identity")
        token_request = TokenRequest(vm, selected, resource)
        echo = params.get("client_id") or None
        if self.tokens is None:
            self.stats.issuer_errors += 1
            return oauth_error(500, "unknown_error", "No token issuer is configured on "
                               "this host", vm=vm, api_version=version)
        token = self.tokens.fresh(cache_key(token_request), now)
        if token is not None:
            self.stats.cached += 1
            return self.token_response(token, resource, echo, vm, version, now)
        limit = self.policy.max_concurrent
        if limit and self._in_flight.get(vm, 0) >= limit:
            self.stats.rate_limited += 1
            return self._throttled(vm, version, route, 1.0)
        self._in_flight[vm] = self._in_flight.get(vm, 0) + 1
        return Issue(token_request, echo, version)

    def release(self, issue: Issue) -> None:
        """The shell is done with an ``Issue`` (answered or cancelled)."""
        vm = issue.request.vm
        left = self._in_flight.get(vm, 0) - 1
        if left > 0:
            self._in_flight[vm] = left
        else:
            self._in_flight.pop(vm, None)

    async def obtain(self, issue: Issue, now: float) -> IssuedToken:
        assert self.tokens is not None
        return await self.tokens.obtain(issue.request, now)

    def answer_issue(self, issue: Issue, token: IssuedToken | None, failure: str | None,
                     now: float) -> Response:
        """The answer once the shell has the token, or the issuer's failure (500)."""
        vm = issue.request.vm
        if token is None:
            self.stats.issuer_errors += 1
            return oauth_error(500, "unknown_error", f"Token issuance failed: {failure}",
                               vm=vm, api_version=issue.api_version)
        return self.token_response(token, issue.request.resource, issue.echo_client_id, vm,
                                   issue.api_version, now)

    def token_response(self, token: IssuedToken, resource: str, echo: str | None, vm: str,
                       version: str, now: float) -> Response:
        self.stats.tokens += 1
        return Response(200, token_body(token, resource, echo, now), JSON,
                        (("Cache-Control", "no-store"),), route=TOKEN_ROUTE, vm=vm,
                        api_version=version)

    def identities(self, vm: str) -> list[Identity]:
        """The VM's identities, system-assigned first (memoised per view change)."""
        assert self.view is not None
        seq = self.view.change_seq
        memo = self._memo.get(vm)
        if memo is not None and memo[0] == seq:
            return memo[1]
        found = read_identities(self.view, vm)
        if len(self._memo) >= 4096:
            self._memo.clear()
        self._memo[vm] = (seq, found)
        return found

    def _throttled(self, vm: str, version: str | None, route: str, wait: float) -> Response:
        retry = str(TokenBuckets.retry_after(wait))
        return oauth_error(429, "invalid_request", THROTTLED, vm=vm, api_version=version,
                           route=route, refused="rate-limited",
                           headers=(("Retry-After", retry),))


def token_body(token: IssuedToken, resource: str, echo_client_id: str | None,
               now: float) -> bytes:
    """The 200 body: every value a string; ``expires_in`` counts down for a cached token."""
    expires_in = str(max(0, token.expires_on - int(now)))
    body = {"access_token": token.access_token, "refresh_token": "",
            "expires_in": expires_in, "expires_on": str(token.expires_on),
            "ext_expires_in": expires_in, "not_before": str(token.not_before),
            "resource": resource, "token_type": "Bearer"}
    if echo_client_id:
        body["client_id"] = echo_client_id
    return json.dumps(body, separators=(",", ":")).encode()


def read_identities(view: View, vm: str) -> list[Identity]:
    """Identities from ``("vms", VM, "identity")``; malformed entries are skipped (a VM
    with a broken identity register has no identity, rather than a 500)."""
    doc = view.document(("vms", vm, "identity"))
    if not isinstance(doc, Mapping):
        return []
    out: list[Identity] = []
    system = doc.get(SYSTEM_ASSIGNED)
    if isinstance(system, Mapping):
        resource_id = system.get("resourceId")
        if not isinstance(resource_id, str) or not resource_id:
            compute = view.document(("vms", vm, "compute", "resourceId"))
            resource_id = compute if isinstance(compute, str) else ""
        ident = _identity(SYSTEM_ASSIGNED, system, resource_id)
        if ident is not None:
            out.append(ident)
    users = doc.get(USER_ASSIGNED)
    if isinstance(users, Mapping):
        for resource_id in sorted(users):
            ident = _identity(USER_ASSIGNED, users[resource_id], resource_id)
            if ident is not None:
                out.append(ident)
    return out


def _identity(kind: str, value: Any, resource_id: str) -> Identity | None:
    if not isinstance(value, Mapping):
        return None
    client, obj, tenant = (value.get(name) for name in ("clientId", "objectId", "tenantId"))
    if not (isinstance(client, str) and isinstance(obj, str) and isinstance(tenant, str)
            and client and obj and tenant):
        return None
    return Identity(kind, client, obj, tenant, resource_id)


def _select(identities: list[Identity], selector: str | None, wanted: str) -> Identity | str:
    """The identity a request names, or the error description. Without a selector: the
    system-assigned one, else the only user-assigned one (as Azure does)."""
    if selector is None:
        if identities and identities[0].kind == SYSTEM_ASSIGNED:
            return identities[0]
        if len(identities) == 1:
            return identities[0]
        if identities:
            return ("Multiple user assigned identities exist, please specify the clientId / "
                    "resourceId of the identity in the token request")
        return NOT_FOUND
    for ident in identities:
        if selector == "client_id" and ident.client_id.lower() == wanted.lower():
            return ident
        if selector == "object_id" and ident.object_id.lower() == wanted.lower():
            return ident
        if selector in ("msi_res_id", "mi_res_id") and ident.kind == USER_ASSIGNED \
                and ident.resource_id.lower() == wanted.lower():
            return ident
    return NOT_FOUND
