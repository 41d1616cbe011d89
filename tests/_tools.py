"""System tools some tests need (installed by scripts/install-tools)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def require_tool(name: str, package: str) -> str:
    """Path of a system tool; skip locally if missing, fail under CI (where it must exist)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not installed (apt-get install {package}, or run scripts/install-tools)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " — CI must have it", pytrace=False)
        pytest.skip(message)
    return path


@contextlib.contextmanager
def small_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A real, small file system at ``mount`` (a tmpfs of ``size``, e.g. "2m"), for disk
    full tests; skip locally, fail under CI, where it cannot be mounted (needs root)."""
    mount.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
            capture_output=True).returncode != 0:
        message = "cannot mount a tmpfs here (needs root and mount(8))"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " — CI must be able to", pytrace=False)
        pytest.skip(message)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
