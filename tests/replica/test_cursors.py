"""Finding 3: a cursor is validated like an event value at ``submit``; every cursor that
``submit`` accepts comes back equal after a restart; logs already written with odd cursors
(a map with integer keys) still open and repair."""

from __future__ import annotations

import math
import tempfile
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from imds_replica import Checkpoint, Event, FileLog, ValidationError, View, open_replica
from imds_replica._codec import normalize
from imds_replica._log import repair_log, verify_log

_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
    st.binary(max_size=4), st.sampled_from([Enum("Color", "RED")["RED"]]))
#: Anything a source might pass as a cursor: tuples, int keys, NaN, bytes, sets, enums...
odd_cursors = st.recursive(
    _leaf, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers(0, 3), st.none()), inner,
                        max_size=3),
        st.frozensets(st.integers(0, 3), max_size=2)), max_leaves=6)


async def _submit_and_restart(directory: Path, cursor: Any) -> tuple[Any, Any] | None:
    """(cursor before restart, after) if submit accepted it; None if refused (and then
    nothing of the batch is in the log)."""
    event = Event("src", ("k", "v"), 1, 1)
    async with open_replica(FileLog(directory, fsync="none")) as replica:
        refused = None
        try:
            await replica.submit([event], checkpoint=Checkpoint("src", cursor))
        except ValidationError as exc:
            refused = exc.message
        if refused is not None:
            assert "cursor" in refused
            assert replica.view.get(("k", "v")) is None  # nothing of a refused batch
            return None
        before = replica.cursor("src")
    async with open_replica(FileLog(directory, fsync="none")) as replica:
        assert replica.view.get(("k", "v")) == event
        return before, replica.cursor("src")


@settings(max_examples=150, deadline=None)
@given(odd_cursors)
def test_every_cursor_submit_accepts_comes_back_equal_after_restart(cursor: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result = trio.run(_submit_and_restart, Path(tmp) / "log", cursor)
    if result is not None:
        before, after = result
        assert after == before == normalize(cursor)
        assert type(after) is type(before)


@pytest.mark.parametrize(("cursor", "reason"), [
    ({1: "partition one"}, "not a string"),
    ({"a": math.nan}, "not a finite number"),
    ({b"x": 1}, "not a string"),
    ({"s": {1, 2}}, "not JSON-representable"),
    ("\ud800", "not encodable"),
])
async def test_bad_cursors_are_refused_with_a_clear_error(
        tmp_path: Path, cursor: Any, reason: str) -> None:
    async with open_replica(FileLog(tmp_path / "log", fsync="none")) as replica:
        with pytest.raises(ValidationError, match=f"checkpoint cursor.*{reason}"):
            await replica.submit([Event("src", ("k", "v"), 1, 1)],
                                 checkpoint=Checkpoint("src", cursor))
        assert replica.view.get(("k", "v")) is None
        assert replica.cursor("src") is None


async def test_a_tuple_cursor_is_normalised_to_a_list(tmp_path: Path) -> None:
    async with open_replica(FileLog(tmp_path / "log", fsync="none")) as replica:
        await replica.submit([], checkpoint=Checkpoint("src", (1, ("a", 2))))
        assert replica.cursor("src") == [1, ["a", 2]]
    async with open_replica(FileLog(tmp_path / "log", fsync="none")) as replica:
        assert replica.cursor("src") == [1, ["a", 2]]


async def test_a_log_written_with_an_int_keyed_cursor_still_opens_and_repairs(
        tmp_path: Path) -> None:
    """0.1.0 accepted such cursors (FileLog itself does not validate): such logs open."""
    log = FileLog(tmp_path / "log", fsync="none")
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, View())
        await log.append([Event("src", ("k", "v"), 1, 1)], Checkpoint("src", {1: "a", 2: [3]}))
        nursery.cancel_scope.cancel()
    assert verify_log(tmp_path / "log").ok
    assert repair_log(tmp_path / "log").damage is None
    async with open_replica(FileLog(tmp_path / "log", fsync="none")) as replica:
        assert replica.cursor("src") == {1: "a", 2: [3]}
        assert replica.view.document(("k", "v")) == 1
