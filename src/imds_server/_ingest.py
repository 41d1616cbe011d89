"""Decoding and validating an admin batch (``POST /events``) without holding the loop.

A batch may be ``admin-max-body-bytes`` (16 MB) of JSON or msgpack: decoded in one call
and validated in one loop, it held the event loop for seconds (VM reads stalled, SIGTERM
waited). Here the body is walked event by event — ``JSONDecoder.raw_decode`` at each
element of the ``events`` array, msgpack's streaming ``Unpacker`` likewise — each event
is validated as it comes, and the loop gets a checkpoint every few milliseconds. Threads
would not help: a decode in C holds the GIL for its whole call.

Every way a body can be wrong is a ``ClientError`` naming what is wrong (answered 400):
bad syntax, nesting too deep for the decoders, a map key that is an array, a bad event
(with its index), a value over the replica's size limit.

Once the whole batch is valid, ``submit_events`` hands it to the replica in parts of
``PART_EVENTS`` events — encoding, logging and applying 100,000 events in one call held
the loop for most of a second — each part whole documents (events whose keys share
their first two parts, ``("vms", VM)``, stay together), so a reader never sees half a
document's change. The answer comes once every part is durable. A storage failure part
way leaves the parts before it durable; the client's retry of the whole batch is
idempotent (same versions), as the log's merge makes any resend.

The collector is paused meanwhile, as the log's recovery does: ingest builds hundreds
of thousands of acyclic objects that stay alive, and each full collection on the way
rescanned the growing heap on the loop.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from imds_replica import DEFAULT_MAX_VALUE_BYTES, ClientError, Event, ValidationError
from imds_replica._gc import gc_paused as _gc_paused

if TYPE_CHECKING:
    from imds_replica import Replica

#: Seconds of decoding between two checkpoints.
SLICE = 0.002
#: Events per part handed to the replica (about 10 ms of its work each).
PART_EVENTS = 512
_WS = re.compile(r"[ \t\n\r]*")


class BodyError(ClientError):
    """An admin body refused before any of it is applied; ``index`` names the event."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


#: Content types read as msgpack (the registered one and the two in common use).
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


async def decode_events(body: bytes, kind: str, *,
                        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
                        min_key_parts: int = 1) -> list[Event]:
    """The events of a ``{"events": [...]}`` body, validated; raises ``BodyError``.

    ``min_key_parts`` is the view's document depth (``Replica.submit`` refuses shorter
    keys; checked here too, so no part of the batch is submitted before it fails)."""
    kind = kind.lower()
    items = _msgpack_items(body) if kind in MSGPACK_TYPES else _json_items(body, kind)
    events: list[Event] = []
    deadline = time.perf_counter() + SLICE
    index = 0
    try:
        for index, item in enumerate(items):
            try:
                events.append(Event.from_dict(item, index=index))
            except ValidationError as exc:
                raise BodyError(exc.message, index=index) from None
            except (TypeError, ValueError, RecursionError) as exc:  # shapes from_dict missed
                raise BodyError(f"not a valid event: {_reason(exc)}", index=index) from None
            size = len(events[-1].encoded)
            if size > max_value_bytes:
                raise BodyError(f"value: {size} bytes encoded, at most {max_value_bytes} "
                                "allowed", index=index)
            key = events[-1].key
            if len(key) < min_key_parts:
                raise BodyError(f"event {index}: key: {list(key)!r} has {len(key)} part(s); "
                                f"keys need at least {min_key_parts} (the document depth: a "
                                f"shorter key would write into every document beneath it)",
                                index=index)
            if not index & 31 and time.perf_counter() >= deadline:
                await trio.lowlevel.checkpoint()
                deadline = time.perf_counter() + SLICE
    except _Bad as exc:
        raise BodyError(str(exc), index=exc.index) from None
    return events


async def submit_events(replica: Replica, events: Sequence[Event]) -> tuple[int, int]:
    """Submit a validated batch in parts of whole documents; (events, changed)."""
    if len(events) <= PART_EVENTS:
        result = await replica.submit(events)
        return result.events, result.changed
    total = changed = 0
    for part in await _parts(events):
        result = await replica.submit(part)
        total += result.events
        changed += result.changed
    return total, changed


async def _parts(events: Sequence[Event]) -> list[list[Event]]:
    """Parts of at most PART_EVENTS events (a larger document alone), documents whole and
    in batch order; grouped with a checkpoint every few thousand events."""
    documents: dict[tuple[str, ...], list[Event]] = {}
    for n, event in enumerate(events):
        documents.setdefault(event.key[:2], []).append(event)
        if not n & 1023:
            await trio.lowlevel.checkpoint()
    parts: list[list[Event]] = []
    part: list[Event] = []
    for document in documents.values():
        if part and len(part) + len(document) > PART_EVENTS:
            parts.append(part)
            part = []
        part.extend(document)
    if part:
        parts.append(part)
    return parts


def gc_paused() -> contextlib.AbstractContextManager[None]:
    """Pause the collector while a batch is ingested: the one helper the log's recovery
    uses too (``imds_replica._gc``). Without ``freeze``: at the end of a batch the request
    that brought it is still alive (its body held by the HTTP parser's reference cycle),
    and a frozen object is never collected, so every batch stayed in memory for good
    (~1.5 MB per 300 KB batch; ``test_repeated_admin_batches_do_not_keep_their_garbage``).
    Recovery still freezes: what it builds lives on."""
    return _gc_paused()


class _Bad(Exception):
    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, TypeError) and "unhashable" in str(exc):
        return "a map key is an array or a map (keys must be strings)"
    return str(exc) or type(exc).__name__


_SHAPE = 'body must be {"events": [...]}'


def _json_items(body: bytes, kind: str) -> Iterator[Any]:
    name = "JSON" if kind in ("application/json", "") else f"JSON (sent as {kind})"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Bad(f"body is not valid {name}: not UTF-8 ({exc.reason} at byte {exc.start})")

    def value(at: int, index: int | None = None) -> tuple[Any, int]:
        try:
            return _DECODER.raw_decode(text, at)
        except json.JSONDecodeError as exc:
            raise _Bad(f"body is not valid {name}: {exc.msg} at line {exc.lineno} column "
                       f"{exc.colno}", index)
        except RecursionError:
            raise _Bad(f"body is not valid {name}: nested too deeply", index)
        except ValueError as exc:  # NaN, Infinity
            raise _Bad(f"body is not valid {name}: {exc}", index)

    def skip(at: int) -> int:
        return _WS.match(text, at).end()  # type: ignore[union-attr]

    def expect(at: int, chars: str) -> tuple[str, int]:
        at = skip(at)
        if at >= len(text) or text[at] not in chars:
            found = repr(text[at]) if at < len(text) else "the end"
            if at == 0 or chars == "{":
                raise _Bad(_SHAPE)
            raise _Bad(f"body is not valid {name}: expected {' or '.join(chars)} at "
                       f"character {at}, found {found}")
        return text[at], at + 1

    _, at = expect(0, "{")
    seen = False
    at = skip(at)
    if text.startswith("}", at):
        raise _Bad(_SHAPE)
    while True:
        at = skip(at)
        key, at = value(at)
        if not isinstance(key, str):
            raise _Bad(f"body is not valid {name}: object keys must be strings")
        _, at = expect(at, ":")
        at = skip(at)
        if key == "events":
            if seen:
                raise _Bad('"events" is given twice')
            seen = True
            if not text.startswith("[", at):
                raise _Bad(_SHAPE)
            at = skip(at + 1)
            index = 0
            if text.startswith("]", at):
                at += 1
            else:
                while True:
                    item, at = value(at, index)
                    yield item
                    index += 1
                    sep, at = expect(at, ",]")
                    if sep == "]":
                        break
                    at = skip(at)
        else:
            _, at = value(at)
        sep, at = expect(at, ",}")
        if sep == "}":
            break
    if skip(at) != len(text):
        raise _Bad(f"body is not valid {name}: extra data after the object")
    if not seen:
        raise _Bad(_SHAPE)


def _msgpack_items(body: bytes) -> Iterator[Any]:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False,
                                max_buffer_size=max(len(body), 1))
    unpacker.feed(body)

    def read(action: Any, index: int | None = None) -> Any:
        try:
            return action()
        except msgpack.OutOfData:
            raise _Bad("body is not valid msgpack: it ends inside a value", index)
        except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
            reason = _reason(exc) if not isinstance(exc, msgpack.StackError) \
                else "nested too deeply"
            raise _Bad(f"body is not valid msgpack: {reason}", index)

    try:
        pairs = unpacker.read_map_header()
    except (ValueError, msgpack.UnpackException):
        raise _Bad(_SHAPE)
    seen = False
    for _ in range(pairs):
        key = read(unpacker.unpack)
        if not isinstance(key, str):
            raise _Bad("body is not valid msgpack: map keys must be strings")
        if key != "events":
            read(unpacker.skip)
            continue
        if seen:
            raise _Bad('"events" is given twice')
        seen = True
        try:
            count = unpacker.read_array_header()
        except (ValueError, msgpack.UnpackException):
            raise _Bad(_SHAPE)
        for index in range(count):
            yield read(unpacker.unpack, index)
    if not seen:
        raise _Bad(_SHAPE)
    try:
        unpacker.skip()
    except msgpack.OutOfData:
        return
    except (ValueError, msgpack.UnpackException):
        pass
    raise _Bad("body is not valid msgpack: extra data after the map")
