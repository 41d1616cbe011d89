"""The event: the only way data enters a replica.

``Event(source, key, version, value | deleted, seq)`` is validated at construction, so an
invalid event cannot exist. Its canonical value encoding and digest are computed once and
kept with it: the merge order, the log and the view digest all use them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from . import _codec
from ._errors import ValidationError

SOURCE_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}\Z")
MAX_KEY_PARTS = 32
#: A key's size is its parts' UTF-8 bytes plus one separator byte per part.
MAX_KEY_BYTES = 1024
MAX_VERSION = 2**63 - 1
#: Default limit on a value's canonical encoding; a replica may be configured otherwise.
DEFAULT_MAX_VALUE_BYTES = 64 * 1024
#: Absolute ceiling an event's value may never exceed, whatever the configuration.
HARD_MAX_VALUE_BYTES = 16 * 1024 * 1024
#: A tombstone's digest in the merge order: empty, so it sorts below every value's 16-byte
#: digest, and a value beats a tombstone of the same version and source. A stream resync
#: tombstones at ``held + 1`` (``_stream._cursor``); a write published later at exactly that
#: version must win on a host that made the tombstone as on one that never did, whatever
#: its value's digest. Every order of events (merge, replay, the wire decoder, the
#: document rule) reads this one constant.
TOMBSTONE_DIGEST = b""

Key = tuple[str, ...]


def _shown(value: Any) -> str:
    """A value as the sender wrote it, in JSON (``true``, ``"1"``, ``[1]``), not as a
    Python repr (``True``): the wire is JSON or msgpack, and so are the messages."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_type(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "null" if value is None else type(value).__name__


def _convert_key(key: object) -> Key:
    if isinstance(key, list):
        return tuple(key)
    return key  # type: ignore[return-value]  # validated below


def _check_source(_: Any, __: Any, source: Any) -> None:
    if not isinstance(source, str) or not SOURCE_RE.match(source):
        raise ValidationError(
            f"source: {_shown(source)} must match [a-z0-9][a-z0-9_.-]{{0,63}}"
        )


def _check_key(_: Any, __: Any, key: Any) -> None:
    if not isinstance(key, tuple) or not key:
        raise ValidationError(f"key: {_shown(key)} must be a non-empty list of strings")
    if len(key) > MAX_KEY_PARTS:
        raise ValidationError(f"key: {len(key)} parts, at most {MAX_KEY_PARTS} allowed")
    size = 0
    for i, part in enumerate(key):
        if not isinstance(part, str) or not part:
            raise ValidationError(f"key[{i}]: {_shown(part)} must be a non-empty string")
        if "\x00" in part:
            raise ValidationError(f"key[{i}]: contains NUL")
        try:
            # Strict UTF-8: a lone surrogate would pass here but break the canonical encoding
            # (log records, the view digest) later.
            size += len(part.encode("utf-8")) + 1
        except UnicodeEncodeError:
            raise ValidationError(f"key[{i}]: not valid Unicode (lone surrogate)") from None
    if size > MAX_KEY_BYTES:
        raise ValidationError(f"key: {size} bytes encoded, at most {MAX_KEY_BYTES} allowed")


def _check_version(_: Any, __: Any, version: Any) -> None:
    if type(version) is not int:
        raise ValidationError(f"version: {_shown(version)} must be an integer")
    if not 0 <= version <= MAX_VERSION:
        raise ValidationError(f"version: {version} out of range 0..2**63-1")


def _check_seq(_: Any, __: Any, seq: Any) -> None:
    # Bounded like versions: the log stores seq as a msgpack integer.
    if seq is not None and (type(seq) is not int or not 0 <= seq <= MAX_VERSION):
        raise ValidationError(
            f"seq: {_shown(seq)} must be a non-negative integer below 2**63, or absent")


@attrs.frozen(eq=False, repr=False, slots=True, weakref_slot=False)
class Event:
    """One versioned write (or deletion, ``deleted=True``) of one register.

    Two events are equal when source, key, version, deletion and value are equal; ``seq``
    (the source's delivery sequence) is delivery metadata and does not take part.
    """

    source: str = attrs.field(validator=_check_source)
    key: Key = attrs.field(converter=_convert_key, validator=_check_key)
    version: int = attrs.field(validator=_check_version)
    value: Any = None
    deleted: bool = attrs.field(default=False, kw_only=True)
    seq: int | None = attrs.field(default=None, kw_only=True, validator=_check_seq)
    #: Canonical msgpack encoding of the value (``b""`` for a tombstone).
    encoded: bytes = attrs.field(init=False)
    #: 16-byte digest of ``encoded``, the last tie-break of the merge order; a tombstone's
    #: is ``TOMBSTONE_DIGEST`` (empty: below every value's).
    digest: bytes = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if type(self.deleted) is not bool:
            raise ValidationError(f"deleted: {_shown(self.deleted)} must be a boolean")
        if self.deleted:
            if self.value is not None:
                raise ValidationError("value: a deletion (deleted=true) takes no value")
            encoded = b""
        else:
            value = _codec.normalize(self.value)
            object.__setattr__(self, "value", value)
            try:
                encoded = _codec.encode(value)
            except UnicodeEncodeError:
                raise ValidationError("value: a string is not valid Unicode (lone surrogate)")
            if len(encoded) > HARD_MAX_VALUE_BYTES:
                raise ValidationError(
                    f"value: {len(encoded)} bytes encoded, at most {HARD_MAX_VALUE_BYTES}"
                )
        object.__setattr__(self, "encoded", encoded)
        object.__setattr__(
            self, "digest", TOMBSTONE_DIGEST if self.deleted else _codec.digest(encoded))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (
            self.version == other.version
            and self.source == other.source
            and self.key == other.key
            and self.deleted == other.deleted
            and self.encoded == other.encoded
        )

    def __hash__(self) -> int:
        return hash((self.source, self.key, self.version, self.deleted, self.encoded))

    def __repr__(self) -> str:
        body = "deleted=True" if self.deleted else f"value={self.value!r}"
        seq = "" if self.seq is None else f", seq={self.seq}"
        return f"Event({self.source!r}, {self.key!r}, {self.version}, {body}{seq})"

    def to_dict(self) -> dict[str, Any]:
        """The wire form: what ``POST /events`` accepts and ``log dump`` prints."""
        out: dict[str, Any] = {"source": self.source, "key": list(self.key),
                               "version": self.version}
        if self.deleted:
            out["deleted"] = True
        else:
            out["value"] = self.value
        if self.seq is not None:
            out["seq"] = self.seq
        return out

    @classmethod
    def from_dict(cls, data: object, *, index: int | None = None) -> Event:
        """Build an event from its wire form; errors name the field (and ``index``)."""
        try:
            if not isinstance(data, Mapping):
                raise ValidationError(f"must be an object, not {_json_type(data)}")
            unknown = set(data) - {"source", "key", "version", "value", "deleted", "seq"}
            if unknown:
                raise ValidationError(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
            for name in ("source", "key", "version"):
                if name not in data:
                    raise ValidationError(f"{name}: missing")
            deleted = data.get("deleted", False)
            if deleted is True and "value" in data:
                raise ValidationError("value: a deletion (deleted=true) takes no value")
            if deleted is not True and "value" not in data:
                raise ValidationError("value: missing (or set deleted=true)")
            key = data["key"]
            if not isinstance(key, (list, tuple)):
                raise ValidationError(f"key: {_shown(key)} must be a list of strings")
            return cls(data["source"], tuple(key), data["version"], data.get("value"),
                       deleted=deleted, seq=data.get("seq"))
        except ValidationError as exc:
            if index is None:
                raise
            raise ValidationError(exc.message, index=index) from None


def validate_batch(
    events: Sequence[object], *, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    min_key_parts: int = 1,
) -> tuple[Event, ...]:
    """Check a whole batch; the first bad event raises with its index, nothing is returned.

    Accepts ``Event`` objects or their wire-form dicts. ``min_key_parts`` is the view's
    document depth: a shorter key would write into every document beneath it.
    """
    if isinstance(events, (str, bytes)) or not isinstance(events, Sequence):
        raise ValidationError("a batch must be a list of events")
    out = []
    for i, item in enumerate(events):
        event = item if isinstance(item, Event) else Event.from_dict(item, index=i)
        if len(event.key) < min_key_parts:
            raise ValidationError(
                f"key: {list(event.key)!r} has {len(event.key)} part(s); keys need at least "
                f"{min_key_parts} (the document depth: a shorter key would write into "
                f"every document beneath it)", index=i)
        if len(event.encoded) > max_value_bytes:
            raise ValidationError(
                f"value: {len(event.encoded)} bytes encoded, at most {max_value_bytes} allowed",
                index=i,
            )
        out.append(event)
    return tuple(out)
