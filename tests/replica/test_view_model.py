"""``View.document`` against a small reference model of the document rule (issue 11).

The model is written for obviousness, not speed, and differs from the view's algorithm on
purpose: it decides who takes part by looking at every ancestor of every register, and
applies those registers in ascending order key (the view: one pass in key order with a
stack). They agree only if the rule is what the docstring says and registers on disjoint
paths commute.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from imds_replica import _view
from imds_replica._codec import encode
from imds_replica._event import Event, Key
from imds_replica._merge import order_key
from imds_replica.testing._strategies import events

from ._helpers import view_of

VM = ("vms", "vm1")
_GONE = object()  # a list element a tombstone removed (dropped at the very end)


def _index(value: list[Any], part: str) -> int | None:
    if not (part.isascii() and part.isdigit()) or (part != "0" and part.startswith("0")):
        return None
    i = int(part)
    return i if i < len(value) else None


def _place(node: Any, path: Key, value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(node, list):
        i = _index(node, head)
        if i is None:
            return node  # a list only ever changes at a position inside it
        node = list(node)
        node[i] = _place(node[i], rest, value)
        return node
    node = dict(node) if isinstance(node, dict) else {}
    node[head] = _place(node.get(head, _GONE), rest, value)
    return node


def _delete(node: Any, path: Key) -> Any:
    if not path:
        return _GONE
    head, rest = path[0], path[1:]
    if isinstance(node, dict) and head in node:
        node = dict(node)
        child = _delete(node[head], rest)
        if child is _GONE:
            del node[head]
        else:
            node[head] = child
    elif isinstance(node, list) and (i := _index(node, head)) is not None:
        node = list(node)
        node[i] = _delete(node[i], rest)
    return node


def _drop_gone(node: Any) -> Any:
    if isinstance(node, list):
        return [_drop_gone(v) for v in node if v is not _GONE]
    if isinstance(node, dict):
        return {k: _drop_gone(v) for k, v in node.items()}
    return node


def model_document(registers: dict[Key, Event], prefix: Key) -> Any:
    """The document rule, literally: a register takes part only if no ancestor register
    has a greater order key; those taking part apply oldest first."""
    taking_part = [
        e for k, e in registers.items()
        if not any(k[:i] in registers and order_key(registers[k[:i]]) > order_key(e)
                   for i in range(1, len(k)))]
    root: Any = _GONE
    for e in sorted(taking_part, key=lambda e: (order_key(e), len(e.key))):
        root = _delete(root, e.key) if e.deleted else _place(root, e.key, e.value)
    root = _drop_gone(root)
    for part in prefix:
        if isinstance(root, dict) and part in root:
            root = root[part]
        elif isinstance(root, list) and (i := _index(root, part)) is not None:
            root = root[i]
        else:
            return None
    return root


def canonical(value: Any) -> bytes:
    return encode(_view._canonical(value))


PARTS = ["a", "b", "0", "1", "2", "01"]
PATHS = st.lists(st.sampled_from(PARTS), max_size=3).map(tuple)
VALUES = st.recursive(st.integers(0, 3) | st.none(),
                      lambda c: st.lists(c, max_size=3)
                      | st.dictionaries(st.sampled_from(["a", "b", "0"]), c, max_size=3),
                      max_leaves=6)
NESTED = events(keys=PATHS.map(lambda p: VM + p), values=VALUES,
                version=st.integers(0, 4))


@settings(max_examples=max(1000, settings().max_examples))
@given(st.lists(NESTED, max_size=14), st.lists(PATHS, min_size=1, max_size=4))
def test_document_equals_the_reference_model(evs: list[Event], paths: list[Key]) -> None:
    view = view_of(*evs)
    registers = {e.key: e for e in view.registers()}
    for path in [(), *paths]:
        got = view.document(VM + path)
        want = model_document(registers, VM + path)
        assert canonical(got) == canonical(want), (VM + path, got, want)


@settings(max_examples=max(300, settings().max_examples))
@given(st.lists(NESTED, max_size=14), st.randoms())
def test_document_depends_only_on_the_register_set(evs: list[Event], rnd: Any) -> None:
    shuffled = list(evs)
    rnd.shuffle(shuffled)
    assert canonical(view_of(*evs).document(VM)) == canonical(view_of(*shuffled).document(VM))
