"""Canonical encoding of JSON-representable values.

One value has exactly one encoding: msgpack with map keys sorted, ints as ints, floats as
64-bit floats. Digests (the LWW tie-break, the view digest, ETags) and the log are built on
it, so it must be identical across processes, machines and Python versions.
"""

from __future__ import annotations

import hashlib
import json
import math
from sys import intern
from typing import Any

import msgpack

from ._errors import ValidationError

#: Values nest at most this deep (a list or object counts as one level).
MAX_DEPTH = 32
#: The one byte msgpack never uses, so no value's canonical encoding equals it. Until
#: session 5 a tombstone's merge digest was taken over it (an arbitrary place among the
#: values' digests); it is now ``_event.TOMBSTONE_DIGEST`` (empty: below every value).
TOMBSTONE_MARKER = b"\xc1"

JSONValue = Any  # str | int | float | bool | None | list[JSONValue] | dict[str, JSONValue]


def normalize(value: object, *, what: str = "value") -> JSONValue:
    """Return ``value`` as plain JSON types with sorted object keys, or raise.

    Tuples become lists; anything not JSON-representable (non-str keys, NaN, sets, bytes,
    nesting deeper than ``MAX_DEPTH``) raises ``ValidationError`` naming the path.
    """
    return _normalize(value, what, 0)


def _normalize(value: object, path: str, depth: int) -> JSONValue:
    # Subclasses (IntEnum, str enums, ...) become their plain type, so a stored value never
    # carries a foreign type and compares, prints and encodes like what a log replay returns.
    if value is None or type(value) is bool or type(value) is str:
        return value
    if isinstance(value, str):
        # ``str(...)`` of a ``(str, Enum)`` member is "Color.RED"; its content (what json
        # writes) is "red".
        return str.__str__(value)
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise ValidationError(f"{path}: integer out of the 64-bit range")
        return value if type(value) is int else int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(f"{path}: {value!r} is not a finite number")
        return value if type(value) is float else float(value)
    if depth >= MAX_DEPTH:
        raise ValidationError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, (list, tuple)):
        return [_normalize(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        try:
            # Interned: one string per distinct key however many documents use it. Values
            # decoded one by one (admin ingest: ``raw_decode`` per event, whose key memo
            # is per call) otherwise keep a copy of every key each: +4.3 KiB per VM.
            keys = sorted(map(intern, value))
        except TypeError:  # not a plain str: checked and named below (kept as it is)
            keys = sorted(value, key=_key_order(path))
        out = {}
        for k in keys:
            out[k] = _normalize(value[k], f"{path}.{k}", depth + 1)
        return out
    raise ValidationError(f"{path}: {type(value).__name__} is not JSON-representable")


def _key_order(path: str) -> Any:
    def check(k: object) -> str:
        if not isinstance(k, str):
            raise ValidationError(f"{path}: object key {k!r} is not a string")
        return k

    return check


def parse_json(data: str | bytes) -> JSONValue:
    """Parse JSON text, or raise ``ValidationError`` saying what is wrong and where.

    Stricter than ``json.loads``: ``NaN`` and ``Infinity`` are refused (they are not JSON and
    not valid values). Bytes are decoded as ``json.loads`` does (UTF-8, -16 or -32).
    """
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"bad JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except UnicodeDecodeError as exc:
        raise ValidationError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise ValidationError("bad JSON: nested too deeply") from None


def _reject_constant(name: str) -> Any:
    raise ValidationError(f"{name} is not valid JSON")


def encode(value: JSONValue) -> bytes:
    """Canonical bytes of an already-normalized value."""
    return msgpack.packb(value, use_bin_type=True)


def decode(data: bytes) -> JSONValue:
    """Inverse of :func:`encode`; raises ``ValueError`` subclasses on garbage."""
    return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)


def digest(data: bytes) -> bytes:
    """A 16-byte digest used for tie-breaks and content ETags."""
    return hashlib.blake2b(data, digest_size=16).digest()
