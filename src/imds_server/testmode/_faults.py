"""Fault rules for test mode: which VM-facing requests are delayed, answered with a forced
status, or dropped, and for how long. Pure: time is an argument.

A rule matches a request by path (a shell-style glob over the path without its query,
``/metadata/instance*``) and optionally by VM. It lasts for ``count`` matching requests, or
``duration`` seconds from when it was added, or both (whichever ends first), or until it
is removed. The newest matching rule wins, so a scenario can lay a short outage over a
long one. Only test mode builds a ``FaultTable``: nothing on the production request path
knows it exists.
"""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Mapping
from typing import Any

import attrs

from imds_replica import ClientError

#: Statuses a rule may force, with what they stand for on a real host.
FORCED_STATUSES = {
    404: "an update in progress (Azure answers 404 for a while)",
    410: "the service is restarting (retry within 70 s)",
    429: "throttled",
    500: "an internal error",
    503: "unavailable",
}
_KEYS = {"path", "vm", "delay", "status", "retry-after", "drop", "count", "duration"}


@attrs.frozen
class FaultRule:
    """``delay`` seconds before answering; then ``status`` (with ``retry-after``), or
    ``drop`` (close the connection with no answer), or the real answer."""

    path: str = "*"
    vm: str | None = None
    delay: float = 0.0
    status: int | None = None
    retry_after: int | None = None
    drop: bool = False
    count: int | None = None
    duration: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.status is not None and self.status not in FORCED_STATUSES:
            raise ClientError(f"fault status must be one of {sorted(FORCED_STATUSES)}, "
                              f"not {self.status}")
        if self.status is not None and self.drop:
            raise ClientError("a fault either forces a status or drops the connection")
        if self.delay < 0 or (self.duration is not None and self.duration <= 0):
            raise ClientError("fault delay must be >= 0 and duration > 0")
        if self.count is not None and self.count < 1:
            raise ClientError("fault count must be >= 1")
        if self.retry_after is not None and (self.retry_after < 0 or self.status is None):
            raise ClientError("fault retry-after needs a status and must be >= 0")
        if not (self.delay or self.status is not None or self.drop):
            raise ClientError("a fault needs a delay, a status or drop = true")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> FaultRule:
        """From the admin API's JSON or a fleet file's ``[[fault]]`` table."""
        if not isinstance(data, Mapping):
            raise ClientError("a fault must be an object")
        unknown = set(data) - _KEYS
        if unknown:
            raise ClientError(f"unknown fault field {sorted(unknown)[0]!r} "
                              f"(known: {', '.join(sorted(_KEYS))})")
        return cls(
            path=_typed(data, "path", str, "*"), vm=_typed(data, "vm", str, None),
            delay=float(_typed(data, "delay", (int, float), 0.0)),
            status=_typed(data, "status", int, None),
            retry_after=_typed(data, "retry-after", int, None),
            drop=_typed(data, "drop", bool, False), count=_typed(data, "count", int, None),
            duration=_number_or_none(data, "duration"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path}
        for name, value in (("vm", self.vm), ("delay", self.delay or None),
                            ("status", self.status), ("retry-after", self.retry_after),
                            ("drop", self.drop or None), ("count", self.count),
                            ("duration", self.duration)):
            if value is not None:
                out[name] = value
        return out

    def matches(self, path: str, vm: str | None) -> bool:
        return (self.vm is None or self.vm == vm) and fnmatch.fnmatchcase(path, self.path)


@attrs.define
class _Active:
    rule: FaultRule
    ident: int
    added: float
    left: int | None
    hits: int = 0

    def expired(self, now: float) -> bool:
        duration = self.rule.duration
        return (self.left is not None and self.left <= 0) or \
            (duration is not None and now >= self.added + duration)


class FaultTable:
    """The rules in force. ``match`` takes one use of the rule it returns."""

    def __init__(self) -> None:
        self._rules: list[_Active] = []
        self._ids = itertools.count(1)

    def add(self, rule: FaultRule, now: float) -> int:
        ident = next(self._ids)
        self._rules.append(_Active(rule, ident, now, rule.count))
        return ident

    def remove(self, ident: int | None = None) -> int:
        """Remove one rule (by id) or all; how many went."""
        before = len(self._rules)
        self._rules = [a for a in self._rules if ident is not None and a.ident != ident]
        return before - len(self._rules)

    def match(self, path: str, vm: str | None, now: float) -> FaultRule | None:
        self._rules = [a for a in self._rules if not a.expired(now)]
        for active in reversed(self._rules):
            if active.rule.matches(path, vm):
                active.hits += 1
                if active.left is not None:
                    active.left -= 1
                return active.rule
        return None

    def listing(self, now: float) -> list[dict[str, Any]]:
        self._rules = [a for a in self._rules if not a.expired(now)]
        out = []
        for a in self._rules:
            entry = {"id": a.ident, **a.rule.to_dict(), "hits": a.hits}
            if a.left is not None:
                entry["left"] = a.left
            if a.rule.duration is not None:
                entry["seconds-left"] = round(a.added + a.rule.duration - now, 3)
            out.append(entry)
        return out


def _typed(data: Mapping[str, Any], key: str, types: type | tuple[type, ...],
           default: Any) -> Any:
    if key not in data:
        return default
    value = data[key]
    wanted = types if isinstance(types, tuple) else (types,)
    if (isinstance(value, bool) and bool not in wanted) or not isinstance(value, wanted):
        names = " or ".join("number" if t is float else t.__name__ for t in wanted)
        raise ClientError(f"fault {key} must be {names}, not {_json_type(value)}")
    return value


def _number_or_none(data: Mapping[str, Any], key: str) -> float | None:
    value = _typed(data, key, (int, float), None)
    return None if value is None else float(value)


def _json_type(value: Any) -> str:
    """The JSON name of a value's type (messages speak JSON, not Python)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
