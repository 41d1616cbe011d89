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
import re
from collections.abc import Mapping
from typing import Any

import attrs
import msgpack

from .. import _codec
from .._errors import ConfigError, ValidationError
from .._event import Event, Key

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
