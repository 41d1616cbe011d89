"""The sources ``imds-server serve`` runs: the config's ``[[source]]`` tables.

Each table has ``kind`` (``file`` | ``poll`` | ``stream``), ``name`` (the ``source`` of its
events), the kind's settings, and optionally the liveliness policy (``interval``,
``stale-after``, ``expired-after``, seconds). A table is checked whole at start: an unknown
key, a missing or mistyped one, or an impossible value is refused with a ``ConfigError``
naming the table (``source[N]``, counted from 1, with its name) and the key.

``interval`` is also the scan period of a file source and the poll period of a poll source.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from imds_replica import (
    ConfigError,
    FileSource,
    LivelinessPolicy,
    PollSource,
    Source,
)
from imds_replica._event import SOURCE_RE

#: Key -> (accepted types, description), per kind; docs/server.md documents them.
COMMON: Mapping[str, tuple[tuple[type, ...], str]] = {
    "kind": ((str,), '"file", "poll" or "stream"'),
    "name": ((str,), "the source name its events carry"),
    "interval": ((int, float), "seconds between expected contacts (also scan/poll period)"),
    "stale-after": ((int, float), "seconds without contact before the data is stale"),
    "expired-after": ((int, float), "seconds without contact before the data is expired"),
}
KINDS: Mapping[str, Mapping[str, tuple[tuple[type, ...], str]]] = {
    "file": {"directory": ((str,), "directory of JSON documents, one per VM")},
    "poll": {"url": ((str,), "http(s) URL answering {\"events\": [...]} with ETags")},
    "stream": {
        "servers": ((list,), "NATS URLs (nats:// or tls://)"),
        "cluster": ((str,), "cluster name: reads stream IMDS_<CLUSTER>"),
        "host": ((str,), "this host's name in the subjects"),
        "credentials": ((str,), "NATS creds file (JWT + nkey seed)"),
        "user": ((str,), "NATS user (with password)"),
        "password": ((str,), "NATS password"),
        "tls-ca": ((str,), "CA bundle verifying the NATS servers' TLS certificates"),
        "batch": ((int,), "messages per fetch (one fetch = one submit), 1..10000"),
        "prefetch": ((bool,), "let a lane's next fetch overlap its batch's fsync "
                     "(false: the next fetch only once the batch is durable)"),
    },
}
REQUIRED: Mapping[str, tuple[str, ...]] = {
    "file": ("directory",), "poll": ("url",), "stream": ("servers", "cluster", "host"),
}
_POLICY_KEYS = ("interval", "stale-after", "expired-after")


@attrs.frozen
class SourceSpec:
    """One checked ``[[source]]`` table."""

    kind: str
    name: str
    settings: Mapping[str, Any]
    table: str  # "source[N] (NAME)", for messages

    def to_table(self) -> dict[str, Any]:
        """The ``[[source]]`` table this was read from (``serve --print-config``)."""
        return {"kind": self.kind, "name": self.name, **self.settings}


def parse_sources(tables: object, *, reserved: Sequence[str] = ()) -> tuple[SourceSpec, ...]:
    """Check every ``[[source]]`` table; names must be unique and not in ``reserved``."""
    if not isinstance(tables, list):
        raise ConfigError("must be an array of tables ([[source]])", key="source")
    specs: list[SourceSpec] = []
    seen: set[str] = set()
    for number, table in enumerate(tables, 1):
        where = f"source[{number}]"
        if not isinstance(table, dict):
            raise ConfigError("must be a table", key=where)
        spec = _parse_one(table, where)
        if spec.name in reserved:
            raise ConfigError(f"{spec.name!r} is a source the server itself writes",
                              key=f"{spec.table}.name")
        if spec.name in seen:
            raise ConfigError(f"{spec.name!r} is already the name of another [[source]]",
                              key=f"{spec.table}.name")
        seen.add(spec.name)
        specs.append(spec)
    for spec in specs:  # build each once now so impossible values fail at start
        build_source(spec)
    streams = [spec for spec in specs if spec.kind == "stream"]
    if streams:
        from imds_replica._stream._wire import check_consumer_names

        check_consumer_names((spec.settings["host"], spec.name) for spec in streams)
    return tuple(specs)


def _parse_one(table: Mapping[str, Any], where: str) -> SourceSpec:
    kind = table.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ConfigError(f"{kind!r}: must be one of {', '.join(sorted(KINDS))}",
                          key=f"{where}.kind")
    name = table.get("name")
    if not isinstance(name, str) or not SOURCE_RE.match(name):
        raise ConfigError(f"{name!r}: must match [a-z0-9][a-z0-9_.-]{{0,63}}",
                          key=f"{where}.name")
    where = f"{where} ({name})"
    known = {**COMMON, **KINDS[kind]}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"unknown key for kind {kind!r} (known: "
                              f"{', '.join(sorted(known))})", key=f"{where}.{key}")
        types, _ = known[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            wanted = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"must be {wanted}, not {type(value).__name__}",
                              key=f"{where}.{key}")
    for key in REQUIRED[kind]:
        if key not in table:
            raise ConfigError(f"missing (kind {kind!r} needs {', '.join(REQUIRED[kind])})",
                              key=f"{where}.{key}")
    settings = {k: v for k, v in table.items() if k not in ("kind", "name")}
    return SourceSpec(kind, name, settings, where)


def build_source(spec: SourceSpec) -> Source:
    """The adapter a checked table describes; ``ConfigError`` names the table and key."""
    s = spec.settings
    try:
        source: Source
        interval = float(s["interval"]) if "interval" in s else None
        if spec.kind == "file":
            source = FileSource(spec.name, Path(s["directory"]),
                                interval=1.0 if interval is None else interval)
        elif spec.kind == "poll":
            source = PollSource(spec.name, s["url"],
                                interval=60.0 if interval is None else interval)
        else:
            from imds_replica._stream._source import stream_source_from_settings

            source = stream_source_from_settings(spec.name, dict(s), None)
        if any(key in s for key in _POLICY_KEYS):
            base = source.policy
            source.policy = LivelinessPolicy(
                interval=float(s.get("interval", base.interval)),
                stale_after=float(s.get("stale-after", base.stale_after)),
                expired_after=float(s.get("expired-after", base.expired_after)),
                always_live=base.always_live, hlc_versions=base.hlc_versions)
    except ConfigError as exc:
        key = exc.key if exc.key not in (None, "liveliness") else "interval"
        message = exc.message
        if exc.key and message.startswith(f"{exc.key}: "):
            message = message[len(exc.key) + 2:]
        raise ConfigError(message, key=f"{spec.table}.{key}") from None
    return source
