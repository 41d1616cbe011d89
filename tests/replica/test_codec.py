from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imds_replica import _codec
from imds_replica._errors import ValidationError
from imds_replica._event import Event
from imds_replica._view import View
from imds_replica.testing._strategies import json_values


def test_pinned_encoding() -> None:
    # The canonical bytes are written to logs and hashed into digests and ETags on every
    # host: they must never change. Spelled out by hand from the msgpack spec.
    value = {"b": 1, "a": [1.5, "x", None, True]}
    expected = bytes.fromhex("82 a1 61 94 cb 3ff8000000000000 a1 78 c0 c3 a1 62 01")
    assert _codec.encode(_codec.normalize(value)) == expected


def test_digest_is_blake2b_128() -> None:
    assert _codec.digest(b"abc") == hashlib.blake2b(b"abc", digest_size=16).digest()


@given(json_values())
def test_round_trip_and_reencoding_is_identical(value: Any) -> None:
    encoded = _codec.encode(_codec.normalize(value))
    decoded = _codec.decode(encoded)
    assert decoded == value
    assert _codec.encode(_codec.normalize(decoded)) == encoded


@given(st.dictionaries(st.text(max_size=5), st.integers(-9, 9), max_size=6), st.randoms())
def test_object_key_order_does_not_matter(value: dict[str, int], rnd: Any) -> None:
    items = list(value.items())
    rnd.shuffle(items)
    assert _codec.encode(_codec.normalize(dict(items))) == _codec.encode(_codec.normalize(value))


@given(json_values())
def test_no_value_encodes_to_the_tombstone_marker(value: Any) -> None:
    assert _codec.encode(_codec.normalize(value)) != _codec.TOMBSTONE_MARKER


def test_look_alike_values_encode_differently() -> None:
    values: tuple[object, ...] = (1, 1.0, True, "1", 0.0, -0.0, None, [], {})
    encodings = {_codec.encode(v) for v in values}
    assert len(encodings) == 9


def test_normalize_names_the_path() -> None:
    with pytest.raises(ValidationError, match=r"^tag\.a\[1\]: .*finite"):
        _codec.normalize({"a": [1, float("-inf")]}, what="tag")


def test_decode_rejects_garbage_with_a_value_error() -> None:
    with pytest.raises(ValueError):
        _codec.decode(b"\x92\x01")  # array of 2 with one element


def test_view_digest_is_pinned() -> None:
    # One register ("a",) = 1 at version 1 from "s": the record is msgpack
    # [["a"], 1, "s", false, b"\x01"], length-prefixed, hashed with blake2b-256.
    view = View()
    view.apply(Event("s", ("a",), 1, 1))
    record = bytes.fromhex("95 91 a1 61 01 a1 73 c2 c4 01 01")
    expected = hashlib.blake2b(len(record).to_bytes(4, "big") + record, digest_size=32)
    assert view.digest() == expected.digest()


_DIGEST_SCRIPT = """
from imds_replica import Event, View
v = View()
for i in range(50):
    v.apply(Event("s" + str(i % 3), ("vms", "vm" + str(i % 7), "k" + str(i)), i,
                  {"n": i, "f": i / 7, "t": ["x", i % 2 == 0], "z": None}))
    if i % 5 == 0:
        v.apply(Event("t", ("vms", "vm" + str(i % 7), "k" + str(i)), i, deleted=True))
print(v.digest().hex())
"""


def test_view_digest_is_identical_across_processes() -> None:
    # A different hash seed changes every set and dict iteration order that could leak in.
    outs = set()
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", _DIGEST_SCRIPT], env=env, check=True,
                              capture_output=True, text=True)
        outs.add(done.stdout.strip())
    namespace: dict[str, Any] = {}
    exec(compile(_DIGEST_SCRIPT.replace("print(", "result = ("), "<digest>", "exec"), namespace)
    outs.add(namespace["result"])
    assert len(outs) == 1


def test_str_and_int_enums_normalise_like_json() -> None:
    # Finding 12: a (str, Enum) member normalised to "Color.RED"; json.dumps gives "red".
    import enum
    import json

    class Color(str, enum.Enum):  # noqa: UP042  # the (str, Enum) mix-in is the case
        RED = "red"

    class Size(enum.IntEnum):
        BIG = 3

    value = {"c": Color.RED, "s": Size.BIG, "l": [Color.RED]}
    assert _codec.normalize(value) == json.loads(json.dumps(value)) == {"c": "red", "s": 3,
                                                                 "l": ["red"]}
    assert type(_codec.normalize(Color.RED)) is str
