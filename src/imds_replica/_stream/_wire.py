"""The fleet wire contract: stream and subject names, key hashes, message payloads.

Other programs publish into and read from these names, so they are a contract:

- one stream per cluster, ``IMDS_<CLUSTER>`` (the cluster name upper-cased);
- ``imds.<cluster>.<host>.<source>.<keyhash>`` holds one host's register,
  ``imds.<cluster>._all.<source>.<keyhash>`` a register every host of the cluster holds;
- ``<keyhash>`` is the lowercase hex of the 16-byte blake2b digest of the key's msgpack
  encoding as an array of strings (NATS tokens cannot hold our keys);
- the payload is the canonical msgpack of the event's wire form, the structure
  ``POST /events`` takes (``source``, ``key``, ``version``, ``value`` | ``deleted: true``).

Everything here is sans-I/O: names in, names out; bytes in, an ``Event`` or a
``WireError`` naming what is wrong out.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import msgpack

from .. import _codec
from .._errors import ConfigError, ValidationError
from .._event import (
    HARD_MAX_VALUE_BYTES,
    MAX_VERSION,
    TOMBSTONE_DIGEST,
    Event,
    Key,
    _check_key,
)

PREFIX = "imds"
ALL_HOSTS = "_all"
#: Cluster names are lower case so that ``IMDS_<CLUSTER>`` names exactly one cluster.
CLUSTER_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\Z")
#: Host names: one NATS token; a leading letter or digit keeps ``_all`` out of reach.
HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}\Z")
#: Sources travel as one subject token: the event rule without dots.
STREAM_SOURCE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\Z")
_KEYHASH_RE = re.compile(r"[0-9a-f]{32}\Z")
_WIRE_FIELDS = frozenset({"source", "key", "version", "value", "deleted"})


class WireError(ValidationError):
    """A message that does not follow the wire contract (its publisher's fault)."""


def check_cluster(cluster: object) -> str:
    if not isinstance(cluster, str) or not CLUSTER_RE.match(cluster):
        raise ConfigError(f"{cluster!r} must match [a-z0-9][a-z0-9_-]{{0,63}} (one lower-case "
                          "NATS token)", key="cluster")
    return cluster


def check_host(host: object) -> str:
    if not isinstance(host, str) or not HOST_RE.match(host):
        raise ConfigError(f"{host!r} must match [A-Za-z0-9][A-Za-z0-9_-]{{0,127}} (one NATS "
                          "token; no dots, wildcards or spaces)", key="host")
    return host


def check_source(source: object) -> str:
    if not isinstance(source, str) or not STREAM_SOURCE_RE.match(source):
        raise ConfigError(f"{source!r} must match [a-z0-9][a-z0-9_-]{{0,63}} to travel on a "
                          "stream (one NATS token: no dots)", key="source")
    return source


def stream_name(cluster: str) -> str:
    """``IMDS_<CLUSTER>``: the one stream of a cluster."""
    return f"IMDS_{check_cluster(cluster).upper()}"


def keyhash(key: Key) -> str:
    """Lowercase hex of blake2b-128 over msgpack(key as an array of strings)."""
    packed = msgpack.packb(list(key), use_bin_type=True)
    return hashlib.blake2b(packed, digest_size=16).hexdigest()


def subject(cluster: str, host: str | None, source: str, key: Key) -> str:
    """The subject of one register; ``host=None`` for the cluster-wide ``_all`` subjects."""
    scope = ALL_HOSTS if host is None else check_host(host)
    return f"{PREFIX}.{check_cluster(cluster)}.{scope}.{check_source(source)}.{keyhash(key)}"


def stream_subjects(cluster: str) -> list[str]:
    """What the cluster's stream captures."""
    return [f"{PREFIX}.{check_cluster(cluster)}.>"]


def host_filters(cluster: str, host: str, source: str) -> list[str]:
    """The subjects one host's consumer of one source reads: its own and ``_all``."""
    check_cluster(cluster), check_host(host), check_source(source)
    return [f"{PREFIX}.{cluster}.{host}.{source}.*", f"{PREFIX}.{cluster}.{ALL_HOSTS}.{source}.*"]


def consumer_name(host: str, source: str) -> str:
    """Deterministic per host and source, so a recreated consumer replaces the old one.

    The consumer of the host's own subjects; ``all_consumer_name`` reads ``_all``."""
    return f"imds-{check_host(host)}-{check_source(source)}"


def all_consumer_name(host: str, source: str) -> str:
    """The host's consumer of its cluster's ``_all`` subjects of ``source``."""
    return f"{consumer_name(host, source)}-all"


def consumer_names(host: str, source: str) -> tuple[str, str]:
    """Both lanes' consumer names of one host and source: (host lane, all lane)."""
    return consumer_name(host, source), all_consumer_name(host, source)


def check_consumer_names(pairs: Iterable[tuple[str, str]]) -> None:
    """Refuse ``(host, source)`` pairs of which two would share a consumer name.

    Hosts and sources may contain ``-``, so ``imds-<host>-<source>[-all]`` is not
    one-to-one: host ``a`` with source ``b-c`` and host ``a-b`` with source ``c`` are both
    ``imds-a-b-c``; a source ``x-all`` is the all lane of ``x`` on the same host; a source
    ``all`` on host ``a-b`` is the all lane of source ``b`` on host ``a``. Either host could
    then delete or replace the other's consumer (never read its data: the create subject
    pins the filter). The names are a contract, so they stay as they are for every pair
    that collides with no other, and a set with a collision is refused: ``ConfigError``
    naming both pairs and the name."""
    owners: dict[str, tuple[str, str, str]] = {}
    for host, source in pairs:
        for lane, name in zip(("host", "all"), consumer_names(host, source), strict=True):
            other = owners.setdefault(name, (host, source, lane))
            if other[:2] != (host, source):
                raise ConfigError(
                    f"consumer name {name!r} would be both the {other[2]} lane's of host "
                    f"{other[0]!r} source {other[1]!r} and the {lane} lane's of host "
                    f"{host!r} source {source!r}: rename one (each host could delete the "
                    f"other's consumer)", key="source")


def encode_event(event: Event) -> bytes:
    """The canonical msgpack of the event's wire form (without delivery metadata)."""
    wire = event.to_dict()
    wire.pop("seq", None)
    return _codec.encode(_codec.normalize(wire))


@attrs.frozen
class SubjectParts:
    cluster: str
    host: str | None  # None: the cluster-wide ``_all`` scope
    source: str
    keyhash: str


def parse_subject(name: str) -> SubjectParts:
    parts = name.split(".")
    if len(parts) != 5 or parts[0] != PREFIX:
        raise WireError(f"subject {name!r}: not imds.<cluster>.<host>.<source>.<keyhash>")
    _, cluster, host, source, digest = parts
    if not CLUSTER_RE.match(cluster):
        raise WireError(f"subject {name!r}: bad cluster token")
    if host != ALL_HOSTS and not HOST_RE.match(host):
        raise WireError(f"subject {name!r}: bad host token")
    if not STREAM_SOURCE_RE.match(source):
        raise WireError(f"subject {name!r}: bad source token")
    if not _KEYHASH_RE.match(digest):
        raise WireError(f"subject {name!r}: key hash is not 32 lowercase hex digits")
    return SubjectParts(cluster, None if host == ALL_HOSTS else host, source, digest)


def decode_event(subject_name: str, payload: bytes, *, seq: int | None = None,
                 expect_cluster: str | None = None, expect_host: str | None = None,
                 expect_source: str | None = None) -> Event:
    """The event a message carries, or ``WireError`` saying why it is refused.

    Refused: a subject outside the layout, one of another cluster, host or source than
    expected, a payload that is not msgpack of a wire-form event, and an event whose
    source or key hash does not match its subject. ``seq`` (the stream sequence) becomes
    the event's delivery ``seq``.
    """
    parts = parse_subject(subject_name)
    if expect_cluster is not None and parts.cluster != expect_cluster:
        raise WireError(f"subject {subject_name!r}: cluster is not {expect_cluster!r}")
    if expect_host is not None and parts.host not in (None, expect_host):
        raise WireError(f"subject {subject_name!r}: neither host {expect_host!r} nor _all")
    if expect_source is not None and parts.source != expect_source:
        raise WireError(f"subject {subject_name!r}: source is not {expect_source!r}")
    try:
        wire: Any = _codec.decode(payload)
    except Exception as exc:  # msgpack raises a zoo of ValueError subclasses and others
        raise WireError(f"payload: not msgpack ({type(exc).__name__})") from None
    if not isinstance(wire, Mapping):
        raise WireError(f"payload: must be a map, not {type(wire).__name__}")
    unknown = set(wire) - _WIRE_FIELDS
    if unknown:
        raise WireError(f"payload: unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    try:
        event = Event.from_dict(dict(wire, seq=seq) if seq is not None else wire)
    except ValidationError as exc:
        raise WireError(f"payload: {exc.message}") from None
    if event.source != parts.source:
        raise WireError(f"payload: source {event.source!r} does not match subject "
                        f"{subject_name!r}")
    if keyhash(event.key) != parts.keyhash:
        raise WireError(f"payload: key {list(event.key)!r} does not hash to the subject's "
                        f"{parts.keyhash}")
    return event


def _canonical(value: object, depth: int) -> bool:
    """True when ``value`` (as msgpack decoded it) is already what ``_codec.normalize``
    returns: plain JSON types, finite floats, string map keys in sorted order, nested at
    most ``_codec.MAX_DEPTH`` deep. A check without building anything or naming paths —
    the slow path does that when this says no."""
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return True  # msgpack ints are within the 64-bit range normalize accepts
    if t is float:
        return math.isfinite(value)  # type: ignore[arg-type]
    if depth >= _codec.MAX_DEPTH:
        return False
    if t is list:
        return all(_canonical(v, depth + 1) for v in value)  # type: ignore[attr-defined]
    if t is dict:
        keys = list(value)  # type: ignore[call-overload]
        return (all(type(k) is str for k in keys) and keys == sorted(keys)
                and all(_canonical(v, depth + 1) for v in value.values()))  # type: ignore[attr-defined]
    return False


class LaneDecoder:
    """``decode_event`` for the messages of one consumer lane, fast for the common case.

    A message on ``prefix`` (``imds.<cluster>.<host|_all>.<source>.``) whose payload is a
    canonical wire-form event (what ``encode_event`` writes) is rebuilt without
    re-normalising its value: msgpack already produced the normalised form, so only the
    checks ``Event`` makes are repeated, and the value is encoded once (C) for its digest.
    Anything else — another subject, a payload that is not a plain map of the wire fields,
    a value that is not already canonical — goes through ``decode_event``, which refuses it
    with the reason or builds it the slow way. ``tests/replica/stream/test_wire.py`` pins
    that both paths agree, event for event and refusal for refusal.
    """

    def __init__(self, prefix: str, *, cluster: str, host: str | None, source: str) -> None:
        self.prefix = prefix
        self._cut = len(prefix)
        self.cluster = cluster
        self.host = host
        self.source = source

    def decode(self, subject_name: str, payload: bytes, seq: int) -> Event:
        """The event of a message delivered on this lane, or ``WireError``."""
        event = self._fast(subject_name, payload, seq)
        if event is not None:
            return event
        event = decode_event(subject_name, payload, seq=seq, expect_cluster=self.cluster,
                             expect_host=self.host, expect_source=self.source)
        if not subject_name.startswith(self.prefix):  # e.g. _all on the host's lane
            raise WireError(f"subject {subject_name!r} is not on this lane ({self.prefix}*)")
        return event

    def _fast(self, subject_name: str, payload: bytes, seq: int) -> Event | None:
        if not subject_name.startswith(self.prefix):
            return None
        try:
            wire = _codec.decode(payload)
        except Exception:  # the slow path names what is wrong
            return None
        if type(wire) is not dict or wire.get("source") != self.source:
            return None
        n = len(wire)
        deleted = wire.get("deleted", False)
        key, version = wire.get("key"), wire.get("version")
        if deleted is True:
            if n != 4 or "value" in wire:
                return None
            value = None
        elif "deleted" in wire or n != 4 or "value" not in wire:
            return None
        else:
            value = wire["value"]
            if not _canonical(value, 0):
                return None
        if (type(key) is not list or type(version) is not int
                or not 0 <= version <= MAX_VERSION
                or type(seq) is not int or not 0 <= seq <= MAX_VERSION):
            return None
        key_t = tuple(key)
        try:
            _check_key(None, None, key_t)
        except ValidationError:
            return None
        if keyhash(key_t) != subject_name[self._cut:]:
            return None
        if deleted is True:
            encoded = b""
            digest = TOMBSTONE_DIGEST
        else:
            try:
                encoded = _codec.encode(value)
            except UnicodeEncodeError:
                return None
            if len(encoded) > HARD_MAX_VALUE_BYTES:
                return None
            digest = _codec.digest(encoded)
        event: Event = object.__new__(Event)
        set_ = object.__setattr__
        set_(event, "source", self.source)
        set_(event, "key", key_t)
        set_(event, "version", version)
        set_(event, "value", value)
        set_(event, "deleted", deleted is True)
        set_(event, "seq", seq)
        set_(event, "encoded", encoded)
        set_(event, "digest", digest)
        return event


def lane_decoder(cluster: str, host: str | None, source: str) -> LaneDecoder:
    """The decoder of one host's lane (``host``) or of the cluster's ``_all`` lane
    (``host=None``) of ``source``."""
    scope = ALL_HOSTS if host is None else check_host(host)
    prefix = f"{PREFIX}.{check_cluster(cluster)}.{scope}.{check_source(source)}."
    return LaneDecoder(prefix, cluster=cluster, host=host, source=source)
