"""Upgrade and downgrade against release 0.1.0 (log format 1; its source archive is in
``releases/``), run from its own venv: 0.1.0 writes; this release opens it with every
acknowledged event and writes format 2; 0.1.0 then refuses cleanly, naming both versions,
and changes nothing; back on this release nothing is lost."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from imds_replica import Checkpoint, Event, View, open_replica
from imds_replica._log import FileLog, stats_log, verify_log
from imds_replica._log._segment import META_NAME

from ._release import PINNED, archive, release_python, run_release

pytestmark = pytest.mark.integration

#: Written with 0.1.0's public API only; prints each batch number once it is acknowledged.
OLD_WRITER = """
import sys, trio
from imds_replica import Checkpoint, Event, FileLog, open_replica

async def main(directory, start, count):
    async with open_replica(FileLog(directory, segment_bytes=8192)) as replica:
        for b in range(start, start + count):
            await replica.submit(
                [Event("old", ("vms", f"vm{b % 7}", "compute", f"f{b}"), b, {"b": b}),
                 Event("old", ("vms", f"vm{b % 7}", "compute", "last"), b, b)],
                checkpoint=Checkpoint("old", {"at": b}))
            print(b, flush=True)

trio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
"""

OLD_OPEN = """
import sys, trio
from imds_replica import FileLog, StorageError, open_replica

async def main(directory):
    async with open_replica(FileLog(directory)):
        print("opened")

try:
    trio.run(main, sys.argv[1])
except BaseException as exc:
    leaf = exc
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    print(f"refused {type(leaf).__name__}: {leaf}")
"""


def _files(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.is_file() and p.name != "LOCK"}


@attrs.frozen
class Opened:
    notes: tuple[str, ...]
    cursor: Any
    registers: dict[tuple[str, ...], Any]


async def _new_writes(directory: Path, start: int, count: int) -> Opened:
    async with open_replica(FileLog(directory, segment_bytes=8192)) as replica:
        notes = replica.recovery.notes
        cursor = replica.cursor("old")
        for b in range(start, start + count):
            await replica.submit(
                [Event("new", ("vms", f"vm{b % 7}", "compute", f"f{b}"), b, {"b": b})],
                checkpoint=Checkpoint("new", {"at": b}))
        registers = {e.key: e.value for e in replica.view.registers()}
    return Opened(notes, cursor, registers)


def _expect(registers: dict[tuple[str, ...], Any], source_batches: range) -> None:
    for b in source_batches:
        assert registers[("vms", f"vm{b % 7}", "compute", f"f{b}")] == {"b": b}, b


async def test_upgrade_from_0_1_0_and_refusal_on_downgrade(tmp_path: Path) -> None:
    python = release_python("0.1.0")
    directory = tmp_path / "log"
    old = run_release(python, OLD_WRITER, str(directory), "1", "300", cwd=tmp_path)
    assert old.returncode == 0, old.stderr
    acked = [int(line) for line in old.stdout.split()]
    assert acked == list(range(1, 301))
    assert len(list(directory.glob("*.seg"))) > 1  # format 1 segments, rotated
    # A torn tail as 0.1.0 leaves it after a crash: this release cuts it by 0.1.0's rules.
    last = sorted(directory.glob("*.seg"))[-1]
    last.write_bytes(last.read_bytes() + b"\x11\x22\x33\x44\x55")
    assert json.loads((directory / META_NAME).read_text())["version"] == 1
    assert stats_log(directory).format_version == 1  # read-only tools do not upgrade

    first = await _new_writes(directory, 1000, 200)
    _expect(first.registers, range(1, 301))
    assert first.cursor == {"at": 300}
    assert any("upgraded the log from format version 1" in n for n in first.notes)
    assert any("torn tail of 5 bytes" in n for n in first.notes)
    assert json.loads((directory / META_NAME).read_text())["version"] == 2
    stats = stats_log(directory)
    assert (stats.format_version, stats.segment_versions) == (2, (1, 2))

    before = _files(directory)
    refused = run_release(python, OLD_OPEN, str(directory), cwd=tmp_path)
    assert refused.returncode == 0, refused.stderr
    assert refused.stdout.startswith("refused StorageError: "), refused.stdout
    assert "uses log format version 2" in refused.stdout
    assert "reads version 1" in refused.stdout
    tool = run_release(python, "import sys; from imds_replica._cli import main; "
                       "sys.exit(main())", "log", "verify", str(directory), cwd=tmp_path)
    assert tool.returncode == 3, (tool.stdout, tool.stderr)
    assert "format version 2" in tool.stderr
    assert _files(directory) == before  # refused, and not a byte changed

    second = await _new_writes(directory, 2000, 50)
    _expect(second.registers, range(1, 301))
    _expect(second.registers, range(1000, 1200))
    assert not any("upgraded" in n for n in second.notes)
    assert verify_log(directory).ok
    # Compaction rewrites the format 1 segments: the log is format 2 throughout.
    log = FileLog(directory, fsync="none")
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run, View())
        await log.compact()
        nursery.cancel_scope.cancel()
    assert stats_log(directory).segment_versions == (2,)
    third = await _new_writes(directory, 3000, 1)
    _expect(third.registers, range(2000, 2050))
    _expect(third.registers, range(1, 301))


def test_release_archive_is_the_tagged_source() -> None:
    """The vendored archive holds exactly the tag's files (checked where the tag exists:
    CI clones carry no tags, which is why the archive is vendored)."""
    version = "0.1.0"
    _digest, commit = PINNED[version]
    repo = Path(__file__).resolve().parents[3]
    git = shutil.which("git")
    if git is None or subprocess.run([git, "-C", str(repo), "cat-file", "-e",
                                      f"{commit}^{{commit}}"]).returncode != 0:
        pytest.skip(f"commit {commit[:12]} of v{version} is not in this clone")
    tagged = subprocess.run([git, "-C", str(repo), "archive", "--format=tar", commit,
                             "pyproject.toml", "requirements.lock", "README.md", "src"],
                            capture_output=True, check=True).stdout

    def members(tar: tarfile.TarFile, prefix: str) -> dict[str, bytes]:
        out = {}
        for member in tar.getmembers():
            if member.isfile():
                handle = tar.extractfile(member)
                assert handle is not None
                out[member.name.removeprefix(prefix)] = handle.read()
        return out

    with tarfile.open(fileobj=io.BytesIO(tagged)) as tar:
        expected = members(tar, "")
    with tarfile.open(archive(version)) as tar:
        got = members(tar, f"imds-replica-{version}/")
    assert got == expected
