"""The wire contract: names, key hashes, payloads, and what decoding refuses."""

from __future__ import annotations

import hashlib

import msgpack
import pytest
from hypothesis import given

from imds_replica import ConfigError, Event
from imds_replica._stream import _wire
from imds_replica._stream._wire import WireError
from imds_replica.testing import events as any_event

KEY = ("vms", "vm-1", "compute", "name")


def test_names() -> None:
    digest = hashlib.blake2b(msgpack.packb(list(KEY)), digest_size=16).hexdigest()
    assert _wire.keyhash(KEY) == digest
    assert len(digest) == 32
    assert digest == digest.lower()
    assert _wire.stream_name("west-1") == "IMDS_WEST-1"
    assert _wire.subject("west-1", "host-7", "fleet", KEY) == f"imds.west-1.host-7.fleet.{digest}"
    assert _wire.subject("west-1", None, "fleet", KEY) == f"imds.west-1._all.fleet.{digest}"
    assert _wire.host_filters("c", "h", "s") == ["imds.c.h.s.*", "imds.c._all.s.*"]
    assert _wire.consumer_name("h", "s") == "imds-h-s"


@pytest.mark.parametrize(("check", "bad"), [
    (_wire.check_cluster, "West"), (_wire.check_cluster, "a.b"), (_wire.check_cluster, ""),
    (_wire.check_host, "_all"), (_wire.check_host, "a.b"), (_wire.check_host, "a*"),
    (_wire.check_host, "a b"), (_wire.check_host, ">"), (_wire.check_source, "a.b"),
    (_wire.check_source, "A"), (_wire.check_cluster, 3),
])
def test_names_that_are_not_one_token_are_refused(check: object, bad: object) -> None:
    with pytest.raises(ConfigError, match=r"must match"):
        check(bad)  # type: ignore[operator]


@given(any_event())
def test_round_trip(event: Event) -> None:
    if "." in event.source:
        return
    payload = _wire.encode_event(event)
    subject = _wire.subject("c1", "h1", event.source, event.key)
    decoded = _wire.decode_event(subject, payload, seq=7, expect_host="h1")
    assert decoded == event
    assert decoded.seq == 7
    # Canonical: the same event always encodes to the same bytes.
    assert _wire.encode_event(decoded) == payload


def _subject(key: tuple[str, ...] = KEY, source: str = "fleet", host: str = "h1") -> str:
    return _wire.subject("c1", host, source, key)


GOOD = _wire.encode_event(Event("fleet", KEY, 5, "one"))


@pytest.mark.parametrize(("subject", "payload", "reason"), [
    (_subject(), b"\xc1garbage", "not msgpack"),
    (_subject(), msgpack.packb([1, 2]), "must be a map"),
    (_subject(), msgpack.packb({"source": "fleet", "key": list(KEY), "version": 1}),
     "value: missing"),
    (_subject(), msgpack.packb({"source": "fleet", "key": list(KEY), "version": 1,
                                "value": 1, "extra": 2}), "unknown field"),
    (_subject(), msgpack.packb({"source": "fleet", "key": list(KEY), "version": 1,
                                "value": 1, "seq": 2}), "unknown field"),
    (_subject(key=("vms", "vm-2")), GOOD, "does not hash"),
    (_subject(source="other"), GOOD, "source is not"),
    (_subject(host="h2"), GOOD, "neither host"),
    ("imds.c1.h1.fleet", GOOD, "not imds."),
    ("imds.c1.h1.fleet.XYZ", GOOD, "32 lowercase hex"),
    ("nope.c1.h1.fleet." + "0" * 32, GOOD, "not imds."),
    ("imds.c2.h1.fleet." + _wire.keyhash(KEY), GOOD, "cluster is not"),
])
def test_decode_refuses(subject: str, payload: bytes, reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        _wire.decode_event(subject, payload, expect_cluster="c1", expect_host="h1",
                           expect_source="fleet")


def test_source_mismatch_inside_the_payload() -> None:
    payload = _wire.encode_event(Event("other", KEY, 5, "one"))
    with pytest.raises(WireError, match="does not match subject"):
        _wire.decode_event(_subject(), payload)
