"""The VM-facing API as a pure function: ``VmApi.handle(request, caller, now)``.

It owns no socket, task or clock. Given a parsed request, the peer address and ``now``
(wall seconds), it answers from the view — or asks the shell to park a watcher (``Park``)
or to submit approval events (``Submit``) first. The order of checks is the error table:
410 while recovering, 403 for an unknown caller, 429 over the rate limit, then the request's
own faults (400 / 404 / 405), then the answer.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import attrs

from imds_replica import ClientError, ConfigError, LivelinessTracker, View

from . import _attested, _render, _schedule, _versions
from ._cache import Answer, AnswerCache
from ._freshness import HEADER as FRESHNESS_HEADER
from ._freshness import freshness
from ._ratelimit import TokenBuckets
from ._request import (
    JSON,
    TEXT,
    BadQuery,
    Offload,
    Park,
    Request,
    Response,
    Submit,
    error,
    parse_query,
    split_path,
)
from .identity._endpoint import PREFIX as IDENTITY_PREFIX
from .identity._endpoint import IdentityEndpoint, IdentityPolicy, Issue

METADATA_HEADER_MESSAGE = "Bad request. Required metadata header not specified"
ATTESTED = "/metadata/attested/document"
LOADBALANCER = "/metadata/loadbalancer"
REPROVISION = "/metadata/reprovisiondata"
LOADBALANCER_SINCE = "2020-10-01"
EXTENDED_SINCE = "2021-03-01"
NO_LOADBALANCER = ("No load balancer metadata is found. Check if your virtual machine is "
                   "using any nonbasic SKU load balancer and retry later.")
#: Routes answered only from some api-version on (older ones: the bad-version 400).
SINCE = {ATTESTED: _attested.SINCE, LOADBALANCER: LOADBALANCER_SINCE}
#: Seconds an ``extended=true`` refusal (a contributing source expired) asks guests to wait.
RETRY_EXTENDED = 10


@attrs.frozen
class ApiPolicy:
    """Limits of the VM-facing API (see docs/server.md for defaults and reasons)."""

    rate_limit: float = 5.0  # requests/s per VM; 0 disables
    rate_burst: float | None = None  # bucket size; default = rate_limit
    max_watchers_per_vm: int = 64
    max_watch_timeout: float = 300.0  # longer timeout_sec values are clamped to this
    retry_after_starting: int = 5
    max_cache_entries_per_vm: int = 64

    def __attrs_post_init__(self) -> None:
        if self.rate_limit < 0:
            raise ConfigError("must be >= 0", key="rate-limit")
        if self.max_watchers_per_vm < 0:
            raise ConfigError("must be >= 0", key="max-watchers-per-vm")
        if self.max_watch_timeout <= 0:
            raise ConfigError("must be > 0", key="max-watch-timeout")


@attrs.define
class ApiStatistics:
    requests: int = 0
    rate_limited: int = 0
    refused_callers: int = 0
    watchers_refused: int = 0
    watches_parked: int = 0


class VmApi:
    """Sans-I/O VM-facing request handling over a view and a liveliness tracker."""

    def __init__(self, policy: ApiPolicy | None = None, *, started: float = 0.0,
                 identity: IdentityPolicy | None = None) -> None:
        self.policy = policy or ApiPolicy()
        #: ``/metadata/identity/...``: its own limits and error shape (the server sets
        #: ``identity.tokens``, the cache over the token issuer).
        self.identity = IdentityEndpoint(identity)
        self.started = started
        self.view: View | None = None
        self.liveliness: LivelinessTracker | None = None
        self.cache: AnswerCache | None = None
        self.buckets = TokenBuckets(self.policy.rate_limit, self.policy.rate_burst)
        self.stats = ApiStatistics()
        self._watchers: dict[str, int] = {}
        self._fresh: dict[tuple[str, ...],
                          tuple[tuple[int, int], tuple[tuple[str, str], ...]]] = {}
        self._versions_body = _render.to_json({"apiVersions": list(_versions.VERSIONS)})
        self._targets: dict[str, _Target] = {}
        #: Signs ``/metadata/attested/document``; None: that path answers 404.
        self.attested: _attested.AttestedSigner | None = None
        self._refusals = _Refusals()

    # -- lifecycle -------------------------------------------------------------------------
    def attach(self, view: View, liveliness: LivelinessTracker) -> None:
        """Start answering from ``view`` (until then every request gets 410)."""
        self.view, self.liveliness = view, liveliness
        self.identity.view = view
        self.cache = AnswerCache(view, max_per_vm=self.policy.max_cache_entries_per_vm)

    @property
    def parked(self) -> int:
        return sum(self._watchers.values())

    def caller_vm(self, caller: str) -> str | None:
        """The VM behind a peer address, from the replicated ``("callers", ADDRESS)``."""
        assert self.view is not None
        event = self.view.get(("callers", caller))
        if event is None or event.deleted or not isinstance(event.value, str):
            return None
        return event.value

    # -- the handler -----------------------------------------------------------------------
    def handle(self, request: Request, caller: str,
               now: float) -> Response | Park | Submit | Issue | Offload:
        self.stats.requests += 1
        if self.view is None:
            retry = str(self.policy.retry_after_starting)
            return error(410, "The service is starting; retry shortly.", refused="starting",
                         headers=(("Retry-After", retry),))
        vm = self.caller_vm(caller)
        if vm is None:
            self.stats.refused_callers += 1
            return self._refusals.forbidden(self._target(request.target))
        if request.target.startswith(IDENTITY_PREFIX):  # identity has its own limits
            return self.identity.handle(request, vm, now)
        wait = self.buckets.take(vm, now)
        if wait:
            self.stats.rate_limited += 1
            return self._refusals.too_many(vm, TokenBuckets.retry_after(wait))
        return self._handle(request, caller, vm, now)

    def _target(self, target: str) -> _Target:
        """The parsed request target, memoised: parsing the query and the path (with
        percent-decoding) is most of a cached read's handler cost, and guests repeat the
        same few targets. Bounded, since the targets are the guests' choice."""
        parsed = self._targets.get(target)
        if parsed is None:
            parsed = _parse_target(target)
            if len(self._targets) >= _MAX_TARGETS:
                self._targets.clear()
            self._targets[target] = parsed
        return parsed

    def _handle(self, request: Request, caller: str, vm: str,
                now: float) -> Response | Park | Submit | Offload:
        target = self._target(request.target)
        if target.bad_query is not None:
            return _bad(f"Bad request. {target.bad_query}", vm)
        params = target.params
        api_version = target.api_version
        if "x-forwarded-for" in request.headers:
            return _bad("Bad request. Relayed requests (X-Forwarded-For) are refused", vm,
                        refused="forwarded", api_version=api_version)
        segments = target.segments
        route = target.route
        if route is None or segments is None:
            return _not_found(vm, api_version)
        if route != "/metadata/versions" and \
                request.headers.get("metadata", "").lower() != "true":
            return _bad(METADATA_HEADER_MESSAGE, vm, refused="no-metadata-header",
                        api_version=api_version, route=route)
        allowed = ("GET", "HEAD", "POST") if route == "/metadata/scheduledevents" \
            else ("GET", "HEAD")
        if request.method not in allowed:
            resp = error(405, f"Method {request.method} not allowed", route=route,
                         headers=(("Allow", ", ".join(allowed)),))
            return attrs.evolve(resp, vm=vm, api_version=api_version)
        if route == "/metadata/versions":
            return self._answer_versions(request, vm)
        if not _versions.is_known(api_version,
                                  scheduled_events=route == "/metadata/scheduledevents") \
                or (route in SINCE and str(api_version) < SINCE[route]):
            return Response(400, _render.to_json(_versions.bad_version_body()), JSON,
                            refused="bad-api-version", route=route, vm=vm,
                            api_version=api_version)
        assert api_version is not None
        if route == ATTESTED:
            return self._attested_document(params, vm, api_version, now)
        fmt = params.get("format", "json")
        if fmt not in ("json", "text") or (fmt == "text" and route != "/metadata/instance"):
            return _bad(f"Bad request. format={fmt} is not supported here", vm,
                        api_version=api_version, route=route)
        if request.method == "POST":
            return self._approve(request, caller, vm, now, api_version)
        watch = params.get("wait_for_change", "false").lower()
        if watch not in ("true", "false"):
            return _bad("Bad request. wait_for_change must be true or false", vm,
                        api_version=api_version, route=route)
        timeout = self.policy.max_watch_timeout
        if watch == "true" and "timeout_sec" in params:
            text = params["timeout_sec"]
            # ASCII digits only: int() would take "2_0", " 2", "+2" and other scripts' digits.
            seconds = int(text) if text.isascii() and text.isdigit() else -1
            if seconds < 0:
                return _bad("Bad request. timeout_sec must be a non-negative integer", vm,
                            api_version=api_version, route=route)
            # Clamped as an int: a huge value is valid, and too large for a float.
            timeout = float(min(seconds, timeout))
        extended = _extended(params, api_version, route)
        answer = self._render(vm, route, segments, api_version, fmt, target.path_key,
                              extended=extended)
        if extended and answer.status == 200:
            refusal = self._refuse_partial(answer, vm, api_version, now)
            if refusal is not None:
                return refusal
        if watch == "true" and answer.status == 200:
            last = _unquote_etag(params.get("last_etag")) or answer.etag
            if last == answer.etag and timeout > 0:
                if self._watchers.get(vm, 0) >= self.policy.max_watchers_per_vm:
                    self.stats.watchers_refused += 1
                    return attrs.evolve(error(
                        429, "Too many parked watchers for this VM", refused="rate-limited",
                        headers=(("Retry-After", "1"),), route=route), vm=vm,
                        api_version=api_version, watch=True)
                self._watchers[vm] = self._watchers.get(vm, 0) + 1
                self.stats.watches_parked += 1
                return Park(request, caller, vm, ("vms", vm), last, timeout)
        return self._respond(request, vm, route, api_version, answer, now,
                             watch=watch == "true")

    def resume(self, park: Park, now: float, timed_out: bool) -> Response | Park:
        """After a wake-up (a change of the VM's document, the deadline, or shutdown when
        ``timed_out``): answer if the value's ETag moved or time is up, else keep waiting.
        Does not take a rate-limit token: the request paid when it arrived."""
        if self.caller_vm(park.caller) != park.vm:  # the address now belongs elsewhere
            return error(403, "Forbidden", refused="unknown-caller")
        req = park.request
        target = self._target(req.target)
        params, segments, route = target.params, target.segments, target.route
        assert route is not None
        assert segments is not None
        version = params["api-version"]
        extended = _extended(params, version, route)
        answer = self._render(park.vm, route, segments, version, params.get("format", "json"),
                              target.path_key, extended=extended)
        if extended and answer.status == 200:
            refusal = self._refuse_partial(answer, park.vm, version, now)
            if refusal is not None:
                return attrs.evolve(refusal, watch=True)
        if answer.status == 200 and answer.etag == park.last_etag and not timed_out:
            return park
        return self._respond(req, park.vm, route, version, answer, now, watch=True)

    def release(self, park: Park) -> None:
        """The shell is done with a parked watcher (answered, cancelled or disconnected)."""
        left = self._watchers.get(park.vm, 0) - 1
        if left > 0:
            self._watchers[park.vm] = left
        else:
            self._watchers.pop(park.vm, None)

    # -- answers ---------------------------------------------------------------------------
    def _respond(self, request: Request, vm: str, route: str, version: str, answer: Answer,
                 now: float, *, watch: bool) -> Response:
        fresh = self._freshness(answer.sources, now)
        if answer.status != 200:
            return Response(answer.status, answer.body, answer.content_type, fresh,
                            route=route, vm=vm, api_version=version, watch=watch,
                            refused="bad-request" if answer.status == 400 else None)
        if_none_match = request.headers.get("if-none-match")
        assert self.cache is not None
        table = self.cache.prepared(vm)  # dropped with the VM's answers
        if not if_none_match:
            # The same answer with the same freshness headers (they change at most once a
            # second) is the same immutable Response: reuse it, so that the connection's
            # wire cache can send its pre-encoded head too. Entries hold their answer, so
            # its id is not reused meanwhile.
            prepared = table.get((id(answer), watch))
            if prepared is not None and prepared[0] is answer and prepared[1] is fresh:
                response: Response = prepared[2]
                if response.route == route and response.api_version == version:
                    return response
        headers = (("ETag", f'"{answer.etag}"'), *fresh)
        if _matches(if_none_match, answer.etag):
            return Response(304, b"", answer.content_type, headers, etag=answer.etag,
                            route=route, vm=vm, api_version=version, watch=watch)
        response = Response(200, answer.body, answer.content_type, headers, etag=answer.etag,
                            route=route, vm=vm, api_version=version, watch=watch)
        if not if_none_match:
            table[(id(answer), watch)] = (answer, fresh, response)
        return response

    def _answer_versions(self, request: Request, vm: str) -> Response:
        etag = _etag(self._versions_body)
        headers = (("ETag", f'"{etag}"'),)
        status = 304 if _matches(request.headers.get("if-none-match"), etag) else 200
        return Response(status, self._versions_body if status == 200 else b"", JSON, headers,
                        etag=etag, route="/metadata/versions", vm=vm)

    def _freshness(self, sources: tuple[str, ...], now: float) -> tuple[tuple[str, str], ...]:
        # Computed at most once per second per set of sources: it reads every source's
        # liveliness, which a hot read path should not repeat per request. Recomputed too
        # once liveliness moved (a contact, a change): a watcher woken by a change must
        # get the Age after it.
        assert self.liveliness is not None
        second = (int(now), self.liveliness.generation)
        memo = self._fresh.get(sources)
        if memo is not None and memo[0] == second:
            return memo[1]
        age, detail = freshness(sources, self.liveliness, now, self.started)
        headers = (("Age", str(age)), (FRESHNESS_HEADER, detail)) if detail \
            else (("Age", str(age)),)
        if len(self._fresh) > 4096:
            self._fresh.clear()
        self._fresh[sources] = (second, headers)
        return headers

    def _render(self, vm: str, route: str, segments: list[str], version: str,
                fmt: str, path_key: str | None = None, *, extended: bool = False) -> Answer:
        assert self.cache is not None
        path = "/".join(segments) if path_key is None else path_key
        key = (f"{path}?extended" if extended else path, version, fmt)
        answer = self.cache.get(vm, key)
        if answer is None:
            answer = self._render_uncached(vm, route, segments, version, fmt, extended)
            self.cache.put(vm, key, answer)
        return answer

    def _render_uncached(self, vm: str, route: str, segments: list[str], version: str,
                         fmt: str, extended: bool = False) -> Answer:
        assert self.view is not None
        doc_key = ("vms", vm)
        if route in (LOADBALANCER, REPROVISION):
            return self._render_register(vm, route)
        if route == "/metadata/scheduledevents":
            prefix = _schedule.events_prefix(vm)
            sources = tuple(sorted({e.source for e in self.view.registers(prefix)}))
            body = _render.to_json(_schedule.render_events(self.view, vm))
            return Answer(200, body, JSON, _etag(body), sources)
        parts = ("compute", "network", "extended") if extended else ("compute", "network")
        sources = tuple(sorted({e.source for e in self.view.registers(doc_key)
                                if len(e.key) < 3 or e.key[2] in parts}))
        document = self.view.document(doc_key)
        rendered = _render.render_instance(document, version,
                                           tags_from_list=self._tags_from_list(vm), vm_id=vm)
        if extended:
            rendered["extended"] = _render.render_extended(document)
        value = _render.walk(rendered, segments[2:])
        if value is _render.MISSING:
            return _failed(404, "Not found", sources)
        if _render.is_leaf(value):
            if fmt != "text":
                return _failed(400, "Bad request. A leaf value must be requested with "
                               "format=text", sources)
            body = _render.to_text(value)
            return Answer(200, body, TEXT, _etag(body), sources)
        if fmt == "text":
            return _failed(400, "Bad request. format=text is only supported on a leaf value",
                           sources)
        body = _render.to_json(value)
        return Answer(200, body, JSON, _etag(body), sources)

    def _render_register(self, vm: str, route: str) -> Answer:
        """``/metadata/loadbalancer`` and ``/metadata/reprovisiondata``: one register each
        (``("vms", VM, "loadbalancer")``, ``("vms", VM, "reprovisiondata")``), 404 when
        absent."""
        assert self.view is not None
        name = route.rsplit("/", 1)[1]
        prefix = ("vms", vm, name)
        sources = tuple(sorted({e.source for e in self.view.registers(prefix)}))
        value = self.view.document(prefix)
        if route == LOADBALANCER:
            if not isinstance(value, dict):
                return _failed(404, NO_LOADBALANCER, sources)
            body = _render.to_json({"loadbalancer": _render.render_loadbalancer(value)})
            return Answer(200, body, JSON, _etag(body), sources)
        if value is None:
            return _failed(404, "Not found", sources)
        if isinstance(value, str):  # as published (cloud-init reads an OVF document)
            body = value.encode()
            return Answer(200, body, TEXT, _etag(body), sources)
        body = _render.to_json(value)
        return Answer(200, body, JSON, _etag(body), sources)

    def _refuse_partial(self, answer: Answer, vm: str, version: str,
                        now: float) -> Response | None:
        """``extended=true`` promises no partial data: a contributing source that is
        expired, or (not pushed) never heard from since start, makes it a 503."""
        assert self.liveliness is not None
        missing = []
        for source in answer.sources:
            status = self.liveliness.status(source, now)
            if status.state.value == "expired" or (
                    status.state.value == "unknown" and not status.policy.always_live):
                missing.append(f"{source} ({status.state.value})")
        if not missing:
            return None
        message = (f"Service temporarily unavailable: extended=true refuses partial data; "
                   f"source {', '.join(missing)} is not current")
        headers = (("Retry-After", str(RETRY_EXTENDED)), *self._freshness(answer.sources, now))
        return attrs.evolve(error(503, message, refused="partial-data",
                                  route="/metadata/instance", headers=headers),
                            vm=vm, api_version=version)

    def _attested_document(self, params: dict[str, str], vm: str, version: str,
                           now: float) -> Response | Offload:
        route = ATTESTED
        nonce = params.get("nonce")
        problem = _attested.nonce_error(nonce)
        if problem is not None:
            return _bad(f"Bad request. {problem}", vm, api_version=version, route=route)
        if self.attested is None:
            return attrs.evolve(error(404, "Attested data is not configured on this host",
                                      route=route), vm=vm, api_version=version)
        assert self.view is not None
        compute = self.view.document(("vms", vm, "compute"))
        signer = self.attested
        content = _attested.signed_content(compute if isinstance(compute, dict) else {},
                                           version, nonce, now, signer.lifetime)

        def sign() -> Response:  # ~1 ms of RSA that releases the GIL: off the loop
            return Response(200, signer.envelope(content), JSON,
                            (("Cache-Control", "no-store"),), route=route, vm=vm,
                            api_version=version)

        return Offload(sign)

    def _tags_from_list(self, vm: str) -> bool:
        """Which published tag form is newer: the deepest register at or above each."""
        assert self.view is not None

        def version(name: str) -> int:
            for key in (("vms", vm, "compute", name), ("vms", vm, "compute"), ("vms", vm)):
                event = self.view.get(key) if self.view is not None else None
                if event is not None:
                    return event.version if len(key) == 4 else -1
            return -2

        return version("tagsList") >= version("tags")

    def _approve(self, request: Request, caller: str, vm: str, now: float,
                 api_version: str) -> Response | Submit:
        assert self.view is not None
        route = "/metadata/scheduledevents"
        try:
            body: Any = json.loads(request.body) if request.body else None
        except (ValueError, UnicodeDecodeError):
            body = None
        listing = self.view.document(_schedule.events_prefix(vm))
        try:
            ids = _schedule.approvals(body, listing if isinstance(listing, dict) else ())
        except ClientError as exc:  # the message is for the guest
            return _bad(exc.message, vm, api_version=api_version, route=route)
        events = _schedule.approval_events(vm, ids, caller, now)
        return Submit(events, _schedule.APPROVAL_SOURCE,
                      Response(200, b"", JSON, route=route, vm=vm, api_version=api_version))


_MAX_TARGETS = 1024


@attrs.frozen(slots=True)
class _Target:
    """A request target parsed once: query parameters (or why they are refused), the
    decoded path segments and their route. ``params`` is shared: read it, never change it."""

    bad_query: str | None
    params: dict[str, str]
    segments: list[str] | None
    route: str | None
    path_key: str | None  # the path as sent, escapes kept: the answer cache's path

    @property
    def api_version(self) -> str | None:
        return self.params.get("api-version")


def _parse_target(target: str) -> _Target:
    path, _, query = target.partition("?")
    try:
        params = parse_query(query)
        bad = None
    except BadQuery as exc:
        params, bad = {}, str(exc)
    segments = split_path(path)
    # The cache key is the path as sent (its segments still escaped): decoding first would
    # make ".../compute%2Fname" (one segment, 404) share the key of ".../compute/name".
    return _Target(bad, params, segments, _route(segments),
                   path.rstrip("/") if segments is not None else None)


class _Refusals:
    """The 403 and 429 answers, made once and reused: a flood of refusals must cost less
    than an answer (finding 5 of issue 14), and the wire cache then sends their bytes as
    encoded once. Bounded: the api-version part of a key is the caller's choice."""

    def __init__(self) -> None:
        self._forbidden: dict[tuple[str | None, str | None], Response] = {}
        self._limited: dict[tuple[str, int], Response] = {}

    def forbidden(self, target: _Target) -> Response:
        # Counted under the route asked for (and its api-version), not "other".
        key = (target.route if target.route != "unavailable" else "unavailable",
               target.api_version)
        resp = self._forbidden.get(key)
        if resp is None:
            if len(self._forbidden) >= 256:
                self._forbidden.clear()
            resp = self._forbidden[key] = attrs.evolve(
                error(403, "Forbidden", refused="unknown-caller", route=key[0] or "other"),
                api_version=key[1])
        return resp

    def too_many(self, vm: str, retry: int) -> Response:
        resp = self._limited.get((vm, retry))
        if resp is None:
            if len(self._limited) >= 4096:
                self._limited.clear()
            resp = self._limited[vm, retry] = attrs.evolve(
                error(429, "Too many requests", refused="rate-limited",
                      headers=(("Retry-After", str(retry)),)), vm=vm)
        return resp


def _route(segments: list[str] | None) -> str | None:
    if not segments or segments[0] != "metadata" or len(segments) < 2:
        return None
    head = segments[1]
    if head == "instance":
        return "/metadata/instance"
    if len(segments) == 2 and head == "versions":
        return "/metadata/versions"
    if len(segments) == 2 and head == "scheduledevents":
        return "/metadata/scheduledevents"
    if len(segments) == 3 and head == "attested" and segments[2] == "document":
        return ATTESTED
    if len(segments) == 2 and head == "loadbalancer":
        return LOADBALANCER
    if len(segments) == 2 and head == "reprovisiondata":
        return REPROVISION
    return None


def _extended(params: dict[str, str], version: str, route: str) -> bool:
    """``extended=true`` on the instance document, from the version that has it."""
    return route == "/metadata/instance" and version >= EXTENDED_SINCE and \
        params.get("extended", "").lower() == "true"


def _etag(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=8).hexdigest()


def _unquote_etag(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    return any(tag.strip() == "*" or _unquote_etag(tag) == etag
               for tag in if_none_match.split(","))


def _failed(status: int, message: str, sources: tuple[str, ...]) -> Answer:
    return Answer(status, json.dumps({"error": message}).encode(), JSON, "", sources)


def _bad(message: str, vm: str, *, refused: str = "bad-request", api_version: str | None = None,
         route: str = "other") -> Response:
    return attrs.evolve(error(400, message, refused=refused, route=route), vm=vm,
                        api_version=api_version)


def _not_found(vm: str, api_version: str | None) -> Response:
    return attrs.evolve(error(404, "Not found"), vm=vm, api_version=api_version)
