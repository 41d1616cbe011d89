from __future__ import annotations

import enum
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imds_replica._errors import ValidationError
from imds_replica._event import (
    DEFAULT_MAX_VALUE_BYTES,
    MAX_KEY_BYTES,
    MAX_VERSION,
    Event,
    validate_batch,
)
from imds_replica.testing._strategies import any_events, json_values


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


# -- construction rules: each names the field and the reason ------------------------------
@pytest.mark.parametrize(
    ("kwargs", "field", "reason"),
    [
        ({"source": ""}, "source", "must match"),
        ({"source": "Fabric"}, "source", "must match"),
        ({"source": "-x"}, "source", "must match"),
        ({"source": "a" * 65}, "source", "must match"),
        ({"source": "fabric\n"}, "source", "must match"),
        ({"source": 7}, "source", "must match"),
        ({"key": ()}, "key", "non-empty"),
        ({"key": "vms"}, "key", "non-empty list"),
        ({"key": ("a", "")}, "key[1]", "non-empty string"),
        ({"key": ("a", 3)}, "key[1]", "non-empty string"),
        ({"key": ("a\x00b",)}, "key[0]", "NUL"),
        ({"key": ("\ud800",)}, "key[0]", "surrogate"),
        ({"key": ("p",) * 33}, "key", "33 parts"),
        ({"key": ("x" * 1024,)}, "key", "1025 bytes"),
        ({"version": -1}, "version", "out of range"),
        ({"version": 2**63}, "version", "out of range"),
        ({"version": True}, "version", "must be an integer"),
        ({"version": 1.0}, "version", "must be an integer"),
        ({"version": "1"}, "version", "must be an integer"),
        ({"value": float("nan")}, "value", "not a finite number"),
        ({"value": {"x": [float("inf")]}}, "value.x[0]", "not a finite number"),
        ({"value": {1: "a"}}, "value", "not a string"),
        ({"value": {"a", "b"}}, "value", "set is not JSON"),
        ({"value": b"raw"}, "value", "bytes is not JSON"),
        ({"value": 2**64}, "value", "64-bit"),
        ({"value": -(2**63) - 1}, "value", "64-bit"),
        ({"value": nested(33)}, "value" + "[0]" * 32, "deeper than 32"),
        ({"value": "\udcff"}, "value", "surrogate"),
        ({"value": {"\ud800": 1}}, "value", "surrogate"),
        ({"value": 1, "deleted": True}, "value", "takes no value"),
        ({"deleted": 1}, "deleted", "boolean"),
        ({"seq": -1}, "seq", "non-negative"),
        ({"seq": True}, "seq", "non-negative"),
        ({"seq": 2**63}, "seq", "below 2**63"),
    ],
)
def test_invalid_event_names_field_and_reason(kwargs: dict[str, Any], field: str,
                                              reason: str) -> None:
    args: dict[str, Any] = {"source": "fabric", "key": ("vms", "a"), "version": 1,
                            "value": "v"}
    args.update(kwargs)
    with pytest.raises(ValidationError) as info:
        Event(**args)
    assert info.value.message.startswith(field + ":")
    assert reason in info.value.message
    assert isinstance(info.value, ValueError)


def test_limits_are_inclusive() -> None:
    Event("a" * 64, ("p",) * 32, MAX_VERSION, nested(32))
    Event("0", ("x" * (MAX_KEY_BYTES - 1),), 0, None)
    # Multi-byte characters count by their UTF-8 size.
    Event("s", ("é" * 511,), 0, 1)
    with pytest.raises(ValidationError, match="1025 bytes"):
        Event("s", ("é" * 512,), 0, 1)


def test_key_list_becomes_tuple_and_value_is_normalized() -> None:
    class Color(enum.IntEnum):
        RED = 1

    e = Event("s", ["vms", "a"], 3, {"b": (1, 2), "a": Color.RED})
    assert e.key == ("vms", "a")
    assert e.value == {"a": 1, "b": [1, 2]}
    assert list(e.value) == ["a", "b"]  # object keys sorted
    assert type(e.value["a"]) is int  # the enum became a plain int


def test_tombstone_has_no_value_and_a_distinct_digest() -> None:
    t = Event("s", ("k",), 1, deleted=True)
    assert t.value is None
    assert t.encoded == b""
    # Regression: the tombstone's digest once equalled that of the value 1 (msgpack 0x01),
    # so a tombstone and a write of 1 at one version and source tied in the merge order.
    assert t.digest != Event("s", ("k",), 1, 1).digest
    assert t.digest != Event("s", ("k",), 1, None).digest


def test_equality_and_hash_ignore_seq_but_not_value_type() -> None:
    a = Event("s", ("k",), 1, 1, seq=4)
    assert a == Event("s", ("k",), 1, 1)
    assert hash(a) == hash(Event("s", ("k",), 1, 1))
    assert a != Event("s", ("k",), 1, 1.0)
    assert a != Event("s", ("k",), 1, True)
    assert a != Event("s", ("k",), 2, 1)
    assert a != Event("t", ("k",), 1, 1)
    assert a != Event("s", ("k",), 1, deleted=True)
    assert a != "not an event"


def test_repr_shows_value_or_deletion() -> None:
    assert repr(Event("s", ("k",), 1, "v", seq=2)) == "Event('s', ('k',), 1, value='v', seq=2)"
    assert repr(Event("s", ("k",), 1, deleted=True)) == "Event('s', ('k',), 1, deleted=True)"


@given(any_events())
def test_wire_form_round_trips(event: Event) -> None:
    back = Event.from_dict(event.to_dict())
    assert back == event
    assert back.seq == event.seq
    assert back.encoded == event.encoded


@given(json_values())
def test_value_survives_construction(value: Any) -> None:
    e = Event("s", ("k",), 0, value)
    assert e.value == value
    assert Event("s", ("k",), 0, e.value).encoded == e.encoded


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ([], "must be an object"),
        ({"source": "s", "key": ["k"]}, "version: missing"),
        ({"key": ["k"], "version": 1, "value": 1}, "source: missing"),
        ({"source": "s", "key": ["k"], "version": 1}, "value: missing"),
        ({"source": "s", "key": ["k"], "version": 1, "value": 1, "extra": 2}, "unknown field"),
        ({"source": "s", "key": "k", "version": 1, "value": 1}, "key:"),
        ({"source": "s", "key": ["k"], "version": 1, "deleted": True, "value": None},
         "takes no value"),
    ],
)
def test_from_dict_rejects(data: object, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        Event.from_dict(data)
    with pytest.raises(ValidationError, match=r"^event 4: ") as info:
        Event.from_dict(data, index=4)
    assert info.value.index == 4


def test_validate_batch_names_index_and_applies_size_limit() -> None:
    good = {"source": "s", "key": ["k"], "version": 1, "value": 1}
    assert validate_batch([good, Event("s", ("j",), 2, None)])[0] == Event("s", ("k",), 1, 1)
    with pytest.raises(ValidationError, match=r"^event 1: version") as info:
        validate_batch([good, {**good, "version": -5}])
    assert info.value.index == 1
    big = Event("s", ("k",), 1, "x" * DEFAULT_MAX_VALUE_BYTES)  # beyond the default limit
    with pytest.raises(ValidationError, match=r"^event 0: value: \d+ bytes"):
        validate_batch([big])
    assert validate_batch([big], max_value_bytes=2 * DEFAULT_MAX_VALUE_BYTES) == (big,)
    for not_a_batch in ("abc", b"abc", 5, {"source": "s"}):
        with pytest.raises(ValidationError, match="must be a list"):
            validate_batch(not_a_batch)  # type: ignore[arg-type]


@given(st.lists(any_events(), max_size=5))
def test_validate_batch_keeps_valid_batches(batch: list[Event]) -> None:
    assert validate_batch(batch, max_value_bytes=2**30) == tuple(batch)
    assert validate_batch([e.to_dict() for e in batch], max_value_bytes=2**30) == tuple(batch)


@pytest.mark.parametrize(("field", "value", "shown"), [
    ("version", True, "version: true must be an integer"),
    ("version", "1", 'version: "1" must be an integer'),
    ("source", None, "source: null must match"),
    ("key", "a/b", 'key: "a/b" must be a list of strings'),
])
def test_messages_show_values_as_json_not_python_reprs(field: str, value: object,
                                                       shown: str) -> None:
    wire = {"source": "s", "key": ["k"], "version": 1, "value": 1, field: value}
    with pytest.raises(ValidationError) as info:
        Event.from_dict(wire)
    assert shown in info.value.message
    assert "True" not in info.value.message
    assert "None" not in info.value.message
