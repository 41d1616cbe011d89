"""``FileSource``: the pure diff, the contract, and the directory loop."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imds_replica._clock import hlc_version, version_wall_ms
from imds_replica._errors import ConfigError, ValidationError
from imds_replica._event import Event
from imds_replica._file_source import (
    _TRUSTED_AHEAD_MS,
    MARKER,
    FileSource,
    _content_hash,
    diff_document,
    field_digest,
    parse_document,
)
from imds_replica._liveliness import SourceState
from imds_replica._logport import Checkpoint, MemoryLog
from imds_replica._replica import open_replica
from imds_replica._source import Source
from imds_replica._view import View
from imds_replica.testing import _strategies as strategies
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
        assert fixed.events == 2  # the field, and the file's record
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
        # Refused files are not recorded, so they are retried (and refused) again.
        assert set(source.files) == {"vm1.json", "vm4.json"}
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
        assert "vm2.json" not in source.files


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
        assert set(source.files) == {"vm1.json"}
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
    version = new_events[0].version
    assert new_events == [Event(SRC, key("vm2", "name"), version, None, deleted=True),
                          Event(SRC, ("sources", SRC, "vm2"), version, None, deleted=True)]
    assert records[-1][1].cursor == source.cursor
    assert set(source.files) == {"vm1.json"}


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
        assert len(list(replica.view.registers(("vms",)))) == 20
    # Three events a file (two fields and its record), whole files to a batch.
    assert [len(batch) for batch, _ in records] == [3] * 10
    assert all(cp.cursor == source.cursor for _, cp in records)


async def test_scan_before_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="before run"):
        await scanned_by_hand(tmp_path).scan()


# -- finding 11.9: no register makes the source fail to start ------------------------------

@pytest.mark.parametrize("version", [2**63 - 1, 2**62])
async def test_a_register_at_the_end_of_the_version_space_does_not_stop_a_restart(
        tmp_path: Path, version: int, caplog: pytest.LogCaptureFixture) -> None:
    """An admin event claiming this source's name at 2**63-1 used to crash-loop the replica:
    the clock was seeded from it and ``now`` raised on every start."""
    bogus = Event(SRC, key("vm9", "name"), version, "from the future")
    records: list[Any] = [((bogus,), None)]
    write(tmp_path, "vm1.json", {"compute": {"name": "a"}})
    source = scanned_by_hand(tmp_path)
    with caplog.at_level(logging.WARNING, logger="imds_replica._file_source"):
        async with open_replica(MemoryLog(records), sources=[source],
                                clock=lambda: 1_000_000.0) as replica:
            written = replica.view.get(key("vm1", "name"))
    assert written is not None
    assert written.value == "a"
    assert source.statistics().clock_beyond_drift == 1
    assert any("beyond the clock's drift bound" in r.getMessage() for r in caplog.records)


async def test_a_far_future_register_drags_versions_only_by_the_drift_bound(
        tmp_path: Path) -> None:
    now = 1_000_000.0
    day_ahead = hlc_version(int((now + 86_400) * 1000))
    records: list[Any] = [((Event(SRC, key("vm9", "name"), day_ahead, "x"),), None)]
    write(tmp_path, "vm1.json", {"compute": {"name": "a"}})
    source = scanned_by_hand(tmp_path, max_clock_drift=10.0)
    async with open_replica(MemoryLog(records), sources=[source], clock=lambda: now) as replica:
        written = replica.view.get(key("vm1", "name"))
    assert written is not None
    assert version_wall_ms(written.version) <= (now + 10.0) * 1000 + 1


# -- finding 11.4: an empty or unmounted directory deletes nothing -------------------------

async def test_an_empty_directory_without_the_marker_removes_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An unmounted mountpoint is an existing, empty directory: it must not read as "every
    file was removed"."""
    write(tmp_path, "vm1.json", {"compute": {"name": "a"}})
    write(tmp_path, "vm2.json", {"compute": {"name": "b"}})
    source = scanned_by_hand(tmp_path)
    async with open_replica(sources=[source]) as replica:
        before = replica.view.digest()
        for name in ("vm1.json", "vm2.json"):
            (tmp_path / name).unlink()
        with caplog.at_level(logging.WARNING, logger="imds_replica._file_source"):
            result = await source.scan()
            again = await source.scan()
        assert result.removed == ()
        assert result.withheld == ("vm1.json", "vm2.json")
        assert again.withheld == result.withheld
        assert replica.view.digest() == before
        warnings = [r for r in caplog.records if MARKER in r.getMessage()]
        assert len(warnings) == 1, "one warning while it lasts, not one per scan"
        status = replica.liveliness.status(SRC, replica.now())
        assert status.last_error is not None
        assert MARKER in status.last_error
        stats = source.statistics()
        assert stats.withheld_removals == 2
        assert stats.unproven_scans == 2
        # The marker proves the directory: now the removal is real.
        (tmp_path / MARKER).touch()
        proven = await source.scan()
        assert proven.removed == ("vm1.json", "vm2.json")
        assert replica.view.document(("vms", "vm1")) is None
        assert source.statistics().withheld_removals == 0


async def test_removing_some_files_without_the_marker_still_removes_them(
        tmp_path: Path) -> None:
    write(tmp_path, "vm1.json", {"compute": {"name": "a"}})
    write(tmp_path, "vm2.json", {"compute": {"name": "b"}})
    source = scanned_by_hand(tmp_path)
    async with open_replica(sources=[source]) as replica:
        (tmp_path / "vm2.json").unlink()
        result = await source.scan()
        assert result.removed == ("vm2.json",)
        assert replica.view.document(("vms", "vm2")) is None


@pytest.mark.parametrize("marker", [False, True])
async def test_at_boot_an_empty_directory_orphans_no_vm_unless_proven(
        tmp_path: Path, marker: bool) -> None:
    records: list[Any] = []
    drop = tmp_path / "drop"
    drop.mkdir()
    write(drop, "vm1.json", {"compute": {"name": "a"}})
    async with open_replica(MemoryLog(records), sources=[scanned_by_hand(drop)]):
        pass
    (drop / "vm1.json").unlink()  # e.g. the volume is not mounted yet at boot
    if marker:
        (drop / MARKER).touch()
    source = scanned_by_hand(drop)
    async with open_replica(MemoryLog(records), sources=[source]) as replica:
        document = replica.view.document(("vms", "vm1"))
    if marker:
        assert document is None
    else:
        assert document == {"compute": {"name": "a"}}
        assert source.statistics().withheld_removals == 1


async def test_at_boot_vms_without_a_file_record_are_swept_only_in_a_proven_directory(
        tmp_path: Path) -> None:
    """Registers of this source for a VM the source has no record of (a log written before
    per-file records, a lost state) are orphans only when the marker proves the listing."""
    legacy = Event(SRC, key("old", "name"), hlc_version(1_000), "left behind")
    records: list[Any] = [((legacy,), None)]
    write(tmp_path, "vm1.json", {"compute": {"name": "a"}})
    async with open_replica(MemoryLog(records), sources=[scanned_by_hand(tmp_path)]) as replica:
        assert replica.view.document(("vms", "old")) == {"compute": {"name": "left behind"}}
    (tmp_path / MARKER).touch()
    async with open_replica(MemoryLog(records), sources=[scanned_by_hand(tmp_path)]) as replica:
        assert replica.view.document(("vms", "old")) is None
        assert replica.view.document(("vms", "vm1")) == {"compute": {"name": "a"}}


# -- finding 11.7: a file is diffed against its own previous content -----------------------

@pytest.mark.parametrize("restart", [False, True])
async def test_editing_an_unrelated_field_does_not_reissue_what_others_changed(
        tmp_path: Path, restart: bool) -> None:
    records: list[Any] = []
    write(tmp_path, "vm1.json", {"compute": {"name": "a", "zone": "1", "sku": "s"}})
    async with open_replica(MemoryLog(records), sources=[scanned_by_hand(tmp_path)],
                            clock=lambda: 1_000.0) as replica:
        # Newer than the file's writes: an operator deletes one field, another source
        # takes over another one.
        later = hlc_version(2_000_000)
        await replica.submit([Event("ops", key("vm1", "zone"), later, None, deleted=True),
                              Event("ops", key("vm1", "sku"), later, "taken over")])
    source = scanned_by_hand(tmp_path)
    if restart:
        write(tmp_path, "vm1.json", {"compute": {"name": "b", "zone": "1", "sku": "s"}})
    async with open_replica(MemoryLog(records), sources=[source],
                            clock=lambda: 3_000.0) as replica:
        if not restart:
            write(tmp_path, "vm1.json", {"compute": {"name": "b", "zone": "1", "sku": "s"}})
            await source.scan()
        assert replica.view.document(("vms", "vm1")) == {
            "compute": {"name": "b", "sku": "taken over"}}
        # The file changing the field itself is a change, and is written.
        write(tmp_path, "vm1.json", {"compute": {"name": "b", "zone": "2", "sku": "s"}})
        result = await source.scan()
        assert result.changed == ("vm1.json",)
        assert replica.view.document(("vms", "vm1")) == {
            "compute": {"name": "b", "zone": "2", "sku": "taken over"}}
    written = [e.key[-1] for batch, _ in records for e in batch
               if e.source == SRC and e.key[0] == "vms"]
    assert written == ["name", "sku", "zone", "name", "zone"]


async def test_removing_a_field_does_not_delete_another_sources_newer_value(
        tmp_path: Path) -> None:
    write(tmp_path, "vm1.json", {"compute": {"name": "a", "zone": "1"}})
    source = scanned_by_hand(tmp_path)
    async with open_replica(sources=[source], clock=lambda: 1_000.0) as replica:
        await replica.submit([Event("ops", key("vm1", "zone"), hlc_version(2_000_000), "9")])
        write(tmp_path, "vm1.json", {"compute": {"name": "a"}})
        await source.scan()
        assert replica.view.document(("vms", "vm1")) == {"compute": {"name": "a", "zone": "9"}}


# -- bounded cursor ------------------------------------------------------------------------

async def test_the_cursor_does_not_grow_with_the_number_of_files(tmp_path: Path) -> None:
    records: list[Any] = []
    source = scanned_by_hand(tmp_path, max_batch_events=16)
    async with open_replica(MemoryLog(records), sources=[source]):
        sizes = []
        for n in (1, 10, 100):
            for i in range(n):
                write(tmp_path, f"vm{n}-{i}.json", {"compute": {"name": str(i)}})
            await source.scan()
            sizes.append(len(json.dumps(source.cursor)))
    assert len(set(sizes)) == 1, sizes
    assert sizes[0] < 100
    assert all(len(json.dumps(cp.cursor)) == sizes[0] for _, cp in records if cp is not None)


def test_diff_against_the_previous_content_skips_unchanged_fields() -> None:
    view = view_of(Event("ops", ("vms", "vm1", "compute", "zone"), 9, None, deleted=True),
                   Event(SRC, ("vms", "vm1", "compute", "name"), 1, "a"))
    before = {"compute": {"name": "a", "zone": "1"}}
    previous = {e.key: field_digest(e) for e in
                [Event(SRC, ("vms", "vm1", "compute", f), 1, v)
                 for f, v in before["compute"].items()]}
    events = diff_document(view, SRC, "vm1", {"compute": {"name": "b", "zone": "1"}}, 2,
                           previous=previous)
    assert [(e.key[-1], e.value) for e in events] == [("name", "b")]
    # Without the previous content the deleted field would be written again.
    assert len(diff_document(view, SRC, "vm1", {"compute": {"name": "b", "zone": "1"}}, 2)) == 2


async def test_a_cursor_of_the_first_format_is_taken_over_without_rewriting_fields(
        tmp_path: Path) -> None:
    """A log from before file records: its cursor names each file's content hash. A file
    unchanged since is recorded, and none of its fields is written again."""
    write(tmp_path, "vm1.json", {"compute": {"name": "a", "zone": "1"}})
    content = _content_hash((tmp_path / "vm1.json").read_bytes())
    written = hlc_version(1_000_000)
    records: list[Any] = [(
        (Event(SRC, key("vm1", "name"), written, "a"),),  # zone was deleted since, by ops:
        Checkpoint(SRC, {"vm1.json": content}))]
    source = scanned_by_hand(tmp_path)
    async with open_replica(MemoryLog(records), sources=[source],
                            clock=lambda: 2_000.0) as replica:
        assert replica.view.document(("vms", "vm1")) == {"compute": {"name": "a"}}
        assert source.files == {"vm1.json": content}
    new = [e.key for batch, _ in records[1:] for e in batch]
    assert new == [("sources", SRC, "vm1")]
    assert records[-1][1].cursor == {"format": 2}


# -- property: no admin batch or file drop makes a restart fail (11.9) ---------------------

_DOCUMENTS = st.dictionaries(
    st.sampled_from(["compute", "network", "x"]),
    st.one_of(st.dictionaries(st.sampled_from(["name", "zone", "tags"]),
                              strategies.json_values(max_leaves=3), max_size=3),
              strategies.json_values(max_leaves=2)),
    max_size=3)
_DROPS = st.dictionaries(
    st.sampled_from(["vm0.json", "vm1.json", "vm2.json", ".imds-drop", "junk.json"]),
    st.one_of(_DOCUMENTS, st.binary(max_size=20)), max_size=4)
_ADMIN_KEYS = st.one_of(strategies.vm_keys(), st.builds(
    lambda vm: ("sources", SRC, f"vm{vm}"), st.integers(0, 2)))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(strategies.events(sources=(SRC, "ops"), keys=_ADMIN_KEYS),
                      max_size=6),
       first=_DROPS, second=_DROPS)
async def test_no_admin_batch_or_file_drop_makes_a_restart_fail(
        batch: list[Event], first: dict[str, Any], second: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as name:
        drop = Path(name)
        records: list[Any] = []

        def stage(files: dict[str, Any]) -> None:
            for old in drop.iterdir():
                old.unlink()
            for file, content in files.items():
                write(drop, file, content if isinstance(content, bytes) else
                      json.dumps(content))

        stage(first)
        async with open_replica(MemoryLog(records), sources=[scanned_by_hand(drop)],
                                clock=lambda: 1_000_000.0) as replica:
            if batch:
                await replica.submit(batch)  # as an admin ingest allowed to would
        stage(second)
        for now in (1_000_000.0, 1_000_500.0):
            source = scanned_by_hand(drop)
            before = len(records)
            async with open_replica(MemoryLog(records), sources=[source],
                                    clock=lambda at=now: at):  # type: ignore[misc]
                result = await source.scan()
                assert result.ok or result.withheld or result.error
            # What the source wrote is near its clock: past its own (trusted) records at
            # most, never dragged to where a forged register of its name points.
            issued = [e.version for batch, _ in records[before:] for e in batch
                      if e.source == SRC]
            assert all(version_wall_ms(v) <= (now + 60) * 1000 + 1 + _TRUSTED_AHEAD_MS
                       for v in issued)
