"""The hash-pinned lock: complete for pyproject.toml, installed as written, used with hashes."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_REQ_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes), parsed from requirements.lock's continuation lines."""
    entries: dict[str, tuple[str, list[str]]] = {}
    text = (ROOT / "requirements.lock").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split()
        name, sep, version = requirement.partition("==")
        assert sep, f"not pinned exactly: {requirement!r}"
        hashes = [o.removeprefix("--hash=") for o in options if o.startswith("--hash=sha256:")]
        entries[_normal(name)] = (version, hashes)
    return entries


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirements = list(project["project"]["dependencies"])
    for extra in ("test", "query"):
        requirements += project["project"]["optional-dependencies"][extra]
    requirements += project["build-system"]["requires"]
    names = set()
    for requirement in requirements:
        match = _REQ_NAME.match(requirement)
        assert match is not None, requirement
        names.add(_normal(match.group(1)))
    return names


def test_every_pin_carries_hashes() -> None:
    lock = _lock()
    assert len(lock) > 20
    for name, (version, hashes) in lock.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), (name, version)
        assert hashes, f"{name}=={version} has no --hash"


def test_lock_covers_everything_pyproject_declares() -> None:
    missing = _declared() - set(_lock())
    assert not missing, f"declared but not locked (run scripts/lock): {missing}"


def test_installed_versions_are_the_locked_ones() -> None:
    for name, (version, _) in _lock().items():
        assert metadata.version(name) == version, f"{name}: installed {metadata.version(name)}"


def test_make_installs_with_hashes_and_the_locked_build_backend() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r requirements.lock" in makefile
    # The project is built by the locked setuptools, not one fetched unpinned at build time.
    assert "--no-build-isolation -e ." in makefile
    script = (ROOT / "scripts" / "lock").read_text()
    assert "--generate-hashes" in script
    assert "--extra test --extra query" in script
