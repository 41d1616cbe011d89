"""``FileSource``: the pure diff, the contract, and the directory loop."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from imds_replica._errors import ConfigError, ValidationError
from imds_replica._event import Event
from imds_replica._file_source import FileSource, diff_document, parse_document
from imds_replica._liveliness import SourceState
from imds_replica._logport import Checkpoint, MemoryLog
from imds_replica._replica import open_replica
from imds_replica._source import Source
from imds_replica._view import View
from imds_replica.testing._source_contract import DELETED, SourceContract, Spec

from ._helpers import view_of

SRC = "files"


def write(directory: Path, name: str, content: Any) -> None:
    """Write atomically, as a well-behaved producer does (temporary file, then rename)."""
    data = content if isinstance(content, (bytes, str)) else json.dumps(content)
    tmp = directory / f".{name}.tmp"
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data)
    os.replace(tmp, directory / name)


# -- the contract --------------------------------------------------------------------------

class TestFileSource(SourceContract):
    def make_source(self, tmp_path: Path) -> Source:
        self.directory = tmp_path / "drop"
        self.directory.mkdir(exist_ok=True)
        return FileSource(self.SOURCE, self.directory, interval=0.05)

    def stage(self, spec: Spec) -> None:
        for key, value in spec.items():
            _, vmid, section, field = key
            path = self.directory / f"{vmid}.json"
            document = json.loads(path.read_text()) if path.exists() else {}
            if value is DELETED:
                document.get(section, {}).pop(field, None)
            else:
                document.setdefault(section, {})[field] = value
            write(self.directory, path.name, document)

    async def settle(self, source: Source) -> None:
        assert isinstance(source, FileSource)
        result = await source.scan()
        assert result.ok
        assert not result.malformed


# -- the pure diff -------------------------------------------------------------------------

def test_diff_new_document_writes_every_field() -> None:
    doc = {"compute": {"name": "a", "tagsList": []}, "network": {"interface": [1]}}
    events = diff_document(View(), SRC, "vm1", doc, 7)
    assert [(e.key, e.value) for e in events] == [
        (("vms", "vm1", "compute", "name"), "a"),
        (("vms", "vm1", "compute", "tagsList"), []),
        (("vms", "vm1", "network", "interface"), [1]),
    ]
    assert all(e.version == 7 and e.source == SRC and not e.deleted for e in events)


def test_diff_only_changed_fields_and_tombstones_for_removed() -> None:
    view = view_of(Event(SRC, ("vms", "vm1", "compute", "name"), 1, "a"),
                   Event(SRC, ("vms", "vm1", "compute", "zone"), 1, "1"),
                   Event(SRC, ("vms", "vm1", "compute", "sku"), 1, {"x": [1, 2]}))
    events = diff_document(view, SRC, "vm1",
                           {"compute": {"name": "b", "sku": {"x": [1, 2]}}}, 2)
    assert [(e.key[-1], e.deleted, e.value) for e in events] == [
        ("name", False, "b"), ("zone", True, None)]
    assert diff_document(view, SRC, "vm1",
                         {"compute": {"name": "a", "zone": "1", "sku": {"x": [1, 2]}}}, 2) == []


def test_diff_of_removed_file_tombstones_only_this_sources_registers() -> None:
    view = view_of(Event(SRC, ("vms", "vm1", "compute", "name"), 1, "a"),
                   Event(SRC, ("vms", "vm1", "compute", "gone"), 1, None, deleted=True),
                   Event("tags", ("vms", "vm1", "compute", "tagsList"), 1, []),
                   Event(SRC, ("vms", "vm2", "compute", "name"), 1, "other vm"))
    events = diff_document(view, SRC, "vm1", None, 5)
    assert events == [Event(SRC, ("vms", "vm1", "compute", "name"), 5, None, deleted=True)]


def test_diff_reasserts_a_field_held_by_another_source_and_a_tombstoned_one() -> None:
    view = view_of(Event("tags", ("vms", "vm1", "compute", "name"), 1, "a"),
                   Event(SRC, ("vms", "vm1", "compute", "zone"), 1, None, deleted=True))
    events = diff_document(view, SRC, "vm1", {"compute": {"name": "a", "zone": "2"}}, 3)
    assert sorted(e.key[-1] for e in events) == ["name", "zone"]


@pytest.mark.parametrize(("document", "message"), [
    ({"compute": 5}, "compute: must be an object of fields, not a number"),
    ({"compute": {"": 1}}, r"compute\.: key\[3\]"),
    ({"compute": {"x": {"a": 2**70}}}, r"compute\.x: value\.a: integer out of the 64-bit"),
    ([1], "must be a JSON object, not an array"),
])
def test_diff_refuses_invalid_documents_whole(document: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        diff_document(View(), SRC, "vm1", document, 1)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty file"),
    (b'{"compute": {"name": "a"', "bad JSON: Expecting"),
    (b"[1, 2]", "must be a JSON object, not an array"),
    (b'{"compute": {"x": NaN}}', "NaN is not valid JSON"),
    (b'{"a": "\xff"}', "not UTF-8"),
])
def test_parse_refuses_malformed_bytes(data: bytes, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_document(data)


def test_parse_accepts_a_byte_order_mark() -> None:
    assert parse_document(b'\xef\xbb\xbf{"compute": {}}') == {"compute": {}}


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigError, match="name"):
        FileSource("Bad Name", "/nonexistent")
    with pytest.raises(ConfigError, match="interval"):
        FileSource("files", "/nonexistent", interval=0)


# -- the directory loop --------------------------------------------------------------------

def key(vmid: str, field: str, section: str = "compute") -> tuple[str, ...]:
    return ("vms", vmid, section, field)


def scanned_by_hand(directory: Path, **options: Any) -> FileSource:
    """A source the test scans itself: its periodic scan is an hour away, so it can never
    slip in between a test's change and its ``scan()`` (and take that scan's work)."""
    return FileSource(SRC, directory, interval=3600, **options)


async def test_first_scan_happens_before_start_and_later_scans_are_periodic(
        tmp_path: Path) -> None:
    # Real time, not the autojump MockClock: a scan waits on a worker thread, and the
    # autojump clock would leap to the next deadline while that thread works.
    write(tmp_path, "vm1.json", {"compute": {"name": "a"}})
    source = FileSource(SRC, tmp_path, interval=0.02)
    async with open_replica(sources=[source]) as replica:
        assert replica.view.document(("vms", "vm1")) == {"compute": {"name": "a"}}
        write(tmp_path, "vm1.json", {"compute": {"name": "b"}})
        # No explicit scan: only the periodic loop can pick this up.
        with trio.fail_after(60):  # a generous bound: scans run on a worker thread
            while replica.view.get(key("vm1", "name")).value != "b":  # type: ignore[union-attr]
                await replica.wait_any_change()
        assert source.statistics().scans >= 2
        status = replica.liveliness.status(SRC, replica.now())
        assert status.state is SourceState.LIVE


async def test_half_written_file_is_reported_and_previous_data_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "vm1.json", {"compute": {"name": "a", "zone": "1"}})
    source = scanned_by_hand(tmp_path)
    async with open_replica(sources=[source]) as replica:
        before = replica.view.digest()
        # A producer writing in place, caught mid-write.
        (tmp_path / "vm1.json").write_text('{"compute": {"name": "b", "zo')
        with caplog.at_level(logging.WARNING, logger="imds_replica._file_source"):
            first = await source.scan()
            second = await source.scan()
        assert first.ok
        assert first.events == 0
        assert "vm1.json" in first.malformed
        assert "bad JSON" in first.malformed["vm1.json"]
        assert second.malformed == first.malformed
        assert replica.view.digest() == before
        warnings = [r for r in caplog.records if "vm1.json" in r.getMessage()]
        assert len(warnings) == 1, "one warning per bad content, not one per scan"
        status = replica.liveliness.status(SRC, replica.now())
        assert status.state is SourceState.LIVE
        assert status.last_error is not None
        assert status.last_error.startswith("vm1.json: bad")
        assert source.statistics().malformed_files == 1

        write(tmp_path, "vm1.json", {"compute": {"name": "b", "zone": "1"}})
        fixed = await source.scan()
        assert fixed.changed == ("vm1.json",)
        assert fixed.events == 1
        assert replica.view.get(key("vm1", "name")).value == "b"  # type: ignore[union-attr]
        assert replica.liveliness.status(SRC, replica.now()).last_error is None
        assert source.statistics().malformed_files == 0


async def test_one_bad_file_does_not_hold_back_the_others(tmp_path: Path) -> None:
    source = scanned_by_hand(tmp_path)
    async with open_replica(sources=[source], max_value_bytes=1024) as replica:
        write(tmp_path, "vm1.json", {"compute": {"name": "a"}})
        write(tmp_path, "vm2.json", {"compute": {"blob": "x" * 2000}})  # over this replica's limit
        write(tmp_path, "vm3.json", {"compute": "not an object"})
        write(tmp_path, "vm4.json", {"compute": {"name": "d"}})
        result = await source.scan()
        assert result.changed == ("vm1.json", "vm4.json")
        assert result.malformed["vm2.json"].startswith("compute.blob: value: ")
        assert "at most 1024" in result.malformed["vm2.json"]
        assert result.malformed["vm3.json"].startswith("compute: must be an object")
        assert replica.view.document(("vms", "vm2")) is None
        assert replica.view.document(("vms", "vm4")) == {"compute": {"name": "d"}}
        # Refused files are not in the cursor, so they are retried (and refused) again.
        assert set(source.cursor) == {"vm1.json", "vm4.json"}
        again = await source.scan()
        assert set(again.malformed) == {"vm2.json", "vm3.json"}
        assert again.events == 0


async def test_removed_field_and_file_give_tombstones(tmp_path: Path) -> None:
    write(tmp_path, "vm1.json", {"compute": {"name": "a", "zone": "1"}, "network": {"x": 1}})
    write(tmp_path, "vm2.json", {"compute": {"name": "b"}})
    source = scanned_by_hand(tmp_path)
    tags = Event("tags", key("vm2", "tagsList"), 1, [])
    async with open_replica(sources=[source]) as replica:
        await replica.submit([tags])
        write(tmp_path, "vm1.json", {"compute": {"name": "a"}})
        (tmp_path / "vm2.json").unlink()
        result = await source.scan()
        assert result.changed == ("vm1.json",)
        assert result.removed == ("vm2.json",)
        assert replica.view.document(("vms", "vm1")) == {"compute": {"name": "a"}}
        assert replica.view.get(key("vm1", "zone")).deleted  # type: ignore[union-attr]
        # The other source's register of the removed VM stays.
        assert replica.view.document(("vms", "vm2")) == {"compute": {"tagsList": []}}
        assert "vm2.json" not in source.cursor


async def test_other_files_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "vm1.json", {"compute": {"name": "a"}})
    (tmp_path / ".vm2.json").write_text("{")  # a writer's hidden temporary
    (tmp_path / "vm3.json.tmp").write_text("{")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "dir.json").mkdir()
    source = scanned_by_hand(tmp_path)
    async with open_replica(sources=[source]) as replica:
        result = await source.scan()
        assert result.malformed == {}
        assert set(source.cursor) == {"vm1.json"}
        assert {e.key[1] for e in replica.view.registers(("vms",))} == {"vm1"}


async def test_unreadable_directory_is_a_failure_that_deletes_nothing(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    write(drop, "vm1.json", {"compute": {"name": "a"}})
    source = scanned_by_hand(drop)
    async with open_replica(sources=[source]) as replica:
        drop.rename(tmp_path / "unmounted")
        result = await source.scan()
        assert not result.ok
        assert result.error is not None
        assert "cannot read directory" in result.error
        assert replica.view.document(("vms", "vm1")) == {"compute": {"name": "a"}}
        status = replica.liveliness.status(SRC, replica.now())
        assert status.consecutive_failures == 1
        assert status.last_error == result.error
        (tmp_path / "unmounted").rename(drop)
        assert (await source.scan()).ok
        assert replica.liveliness.status(SRC, replica.now()).last_error is None


async def test_missing_directory_at_start_does_not_prevent_start(tmp_path: Path) -> None:
    source = scanned_by_hand(tmp_path / "absent")
    async with open_replica(sources=[source]) as replica:
        status = replica.liveliness.status(SRC, replica.now())
        assert status.state is SourceState.UNKNOWN
        assert status.last_error is not None


async def test_restart_skips_unchanged_files_by_cursor(tmp_path: Path) -> None:
    records: list[Any] = []
    for i in range(3):
        write(tmp_path, f"vm{i}.json", {"compute": {"name": str(i)}})
    async with open_replica(MemoryLog(records), sources=[scanned_by_hand(tmp_path)]):
        pass
    source = scanned_by_hand(tmp_path)
    parsed: list[bytes] = []
    original = parse_document

    def counting(data: bytes) -> dict[str, Any]:
        parsed.append(data)
        return original(data)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("imds_replica._file_source.parse_document", counting)
        async with open_replica(MemoryLog(records), sources=[source]):
            result = await source.scan()
    assert parsed == []
    assert result.events == 0
    assert result.changed == ()


async def test_without_a_cursor_the_view_diff_still_writes_nothing_twice(tmp_path: Path) -> None:
    records: list[Any] = []
    write(tmp_path, "vm1.json", {"compute": {"name": "a"}})
    write(tmp_path, "vm2.json", {"compute": {"name": "b"}})
    async with open_replica(MemoryLog(records), sources=[scanned_by_hand(tmp_path)]):
        pass
    # The cursor is lost (say the adapter was renamed and back); vm2 was removed meanwhile.
    records[:] = [(batch, None) for batch, _ in records]
    (tmp_path / "vm2.json").unlink()
    logged = len(records)
    source = scanned_by_hand(tmp_path)
    async with open_replica(MemoryLog(records), sources=[source]) as replica:
        assert replica.view.document(("vms", "vm1")) == {"compute": {"name": "a"}}
        # vm2 has no file and no cursor entry: found by its registers in the view.
        assert replica.view.document(("vms", "vm2")) is None
    new_events = [e for batch, _ in records[logged:] for e in batch]
    assert new_events == [Event(SRC, key("vm2", "name"), new_events[0].version, None,
                                deleted=True)]
    assert records[-1][1] == Checkpoint(SRC, source.cursor)
    assert set(source.cursor) == {"vm1.json"}


async def test_versions_never_go_backwards_across_restarts(tmp_path: Path) -> None:
    records: list[Any] = []
    write(tmp_path, "vm1.json", {"compute": {"name": "a"}})
    async with open_replica(MemoryLog(records), sources=[scanned_by_hand(tmp_path)],
                            clock=lambda: 2_000_000.0) as replica:
        first = replica.view.get(key("vm1", "name"))
    assert first is not None
    write(tmp_path, "vm1.json", {"compute": {"name": "b"}})
    # The host's clock stepped back a long way while it was down.
    async with open_replica(MemoryLog(records), sources=[scanned_by_hand(tmp_path)],
                            clock=lambda: 1_000.0) as replica:
        second = replica.view.get(key("vm1", "name"))
        assert second is not None
        assert second.value == "b"
        assert second.version > first.version


async def test_large_scans_are_split_into_batches_each_with_its_cursor(tmp_path: Path) -> None:
    records: list[Any] = []
    for i in range(10):
        write(tmp_path, f"vm{i}.json", {"compute": {"a": i, "b": i}})
    source = scanned_by_hand(tmp_path, max_batch_events=4)
    async with open_replica(MemoryLog(records), sources=[source]) as replica:
        assert len(replica.view) == 20
    assert [len(batch) for batch, _ in records] == [4] * 5
    assert all(len(cp.cursor) == 2 * (i + 1) for i, (_, cp) in enumerate(records))


async def test_scan_before_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="before run"):
        await scanned_by_hand(tmp_path).scan()
