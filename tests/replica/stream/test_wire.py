"""The wire contract: names, key hashes, payloads, and what decoding refuses."""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imds_replica import ConfigError, Event, ValidationError, _codec
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
    assert _wire.all_consumer_name("h", "s") == "imds-h-s-all"


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


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=5)
    | st.binary(max_size=3),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    | st.dictionaries(st.integers(0, 3), inner, min_size=1, max_size=2),
    max_leaves=12)
_KEYS = [["a", "b"]] * 6 + [[], ["a", ""], ["a\x00"], "ab", ["x"] * 40, [1]]
_MODES = ["value"] * 6 + ["deleted", "deleted", "deleted+value", "deleted=false", "missing",
                          "extra", "seq"]


def _make(source: object, key: object, version: object, value: object,
          mode: str) -> dict[str, Any]:
    wire: dict[str, Any] = {"source": source, "key": key, "version": version}
    if mode in ("value", "extra", "seq", "deleted=false", "deleted+value"):
        wire["value"] = value
    if mode.startswith("deleted"):
        wire["deleted"] = mode != "deleted=false"
    if mode == "extra":
        wire["extra"] = 1
    if mode == "seq":
        wire["seq"] = 3
    return wire


_wire_maps = st.builds(
    _make, st.sampled_from(["s"] * 5 + ["t", 1]), st.sampled_from(_KEYS),
    st.sampled_from([1] * 5 + [0, -1, 2**63, True, 1.5]), _json, st.sampled_from(_MODES))


@settings(max_examples=1000, deadline=None)
@given(_wire_maps, st.sampled_from(["same"] * 4 + ["h", None, "other"]),
       st.sampled_from([True] * 4 + [False]), st.sampled_from(["h", None]), st.booleans())
def test_the_lane_decoder_agrees_with_decode_event(
        wire: dict[str, Any], scope: str | None, right_hash: bool, lane: str | None,
        canonical: bool) -> None:
    """Fast path or not, a lane's decoder returns what decode_event does (field for field,
    encoding and digest included) or refuses what it refuses (and what is off the lane)."""
    if scope == "same":
        scope = lane
    key = wire.get("key")
    digest = (_wire.keyhash(tuple(key)) if right_hash and isinstance(key, list)
              and all(isinstance(p, str) for p in key) else "0" * 32)
    scope_token = "_all" if scope is None else scope
    subject = f"imds.c.{scope_token}.s.{digest}"
    try:
        payload = (_codec.encode(_codec.normalize(wire)) if canonical
                   else msgpack.packb(wire, use_bin_type=True))
    except (ValidationError, ValueError, TypeError, OverflowError):
        payload = msgpack.packb(repr(wire))
    decoder = _wire.lane_decoder("c", lane, "s")

    def slow() -> Event:
        event = _wire.decode_event(subject, payload, seq=7, expect_cluster="c",
                                   expect_host=lane, expect_source="s")
        if scope != lane:
            raise _wire.WireError("off the lane")
        return event

    try:
        expected: Event | None = slow()
    except _wire.WireError:
        expected = None
    try:
        got: Event | None = decoder.decode(subject, payload, 7)
    except _wire.WireError:
        got = None
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert (got.source, got.key, got.version, got.value, got.deleted, got.seq,
                got.encoded, got.digest) == (
            expected.source, expected.key, expected.version, expected.value,
            expected.deleted, expected.seq, expected.encoded, expected.digest)


def test_the_fast_path_takes_what_encode_event_writes() -> None:
    event = Event("s", ("a", "b"), 3, {"z": [1, 2.5, None], "a": {"y": True, "b": "x"}})
    decoder = _wire.lane_decoder("c", "h", "s")
    subject = _wire.subject("c", "h", "s", event.key)
    assert decoder._fast(subject, _wire.encode_event(event), 9) == event
    assert decoder._fast(subject, _wire.encode_event(Event("s", ("a", "b"), 4,
                                                           deleted=True)), 9) is not None


def _deep(n: int) -> object:
    return 1 if n == 0 else [_deep(n - 1)]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1, {"b": 1, "a": 2}], b"x",
                                   {1: "a"}, _deep(33)])
def test_the_fast_path_leaves_what_is_not_canonical_to_decode_event(value: object) -> None:
    decoder = _wire.lane_decoder("c", "h", "s")
    subject = _wire.subject("c", "h", "s", ("a", "b"))
    payload = msgpack.packb({"key": ["a", "b"], "source": "s", "value": value, "version": 1},
                            use_bin_type=True)
    assert decoder._fast(subject, payload, 1) is None


@pytest.mark.parametrize(("first", "second", "name"), [
    (("a", "b-c"), ("a-b", "c"), "imds-a-b-c"),  # both host lanes
    (("h", "x-all"), ("h", "x"), "imds-h-x-all"),  # a host lane and an all lane, one host
    (("a-b", "all"), ("a", "b"), "imds-a-b-all"),  # a host lane and another host's all lane
    (("a-b", "c-all"), ("a", "b-c"), "imds-a-b-c-all"),
])
def test_colliding_consumer_names_are_refused_naming_both(
        first: tuple[str, str], second: tuple[str, str], name: str) -> None:
    """Before: ``imds-<host>-<source>[-all]`` could be one host's and another's consumer, so
    either could delete or replace the other's (denial of service)."""
    for pairs in ([first, second], [second, first]):
        with pytest.raises(ConfigError) as caught:
            _wire.check_consumer_names(pairs)
        message = str(caught.value)
        assert name in message
        for host, source in (first, second):
            assert f"host {host!r} source {source!r}" in message


def test_names_that_cannot_collide_keep_their_consumer_names() -> None:
    pairs = [("host-7", "fleet"), ("host-8", "fleet"), ("host-7", "tags"), ("a", "b-c"),
             ("a", "c"), ("host", "fleet")]
    _wire.check_consumer_names(pairs)  # no error
    _wire.check_consumer_names([("h", "s"), ("h", "s")])  # the same pair twice is one host
    assert _wire.consumer_names("host-7", "fleet") == ("imds-host-7-fleet",
                                                       "imds-host-7-fleet-all")
