"""An earlier release of imds-replica, installed from its source archive into its own venv.

The archives live in ``releases/`` beside this file (``imds-replica-<version>.tar.gz``, the
``git archive`` of the release tag's ``src``, ``pyproject.toml``, ``requirements.lock`` and
``README.md``), so the upgrade tests need neither git nor tags: CI works on a clone that has
no tags. Each archive's digest is pinned here, so a changed archive is an error, not a
silently different "old release". The venv is built once per archive under the temp
directory (``python -m venv``, ``pip install`` of the release's source constrained by its
own ``requirements.lock``) and reused by later runs; a lock file keeps concurrent runs from
building it twice.

To add a release: ``git archive --format=tar --prefix=imds-replica-X.Y.Z/ vX.Y.Z
pyproject.toml requirements.lock README.md src | gzip -n -9 >
tests/replica/log/releases/imds-replica-X.Y.Z.tar.gz`` and pin its sha256 below.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

RELEASES = Path(__file__).resolve().parent / "releases"

#: sha256 of each archive in ``releases/``, and the tag's commit it was made from.
PINNED = {
    "0.1.0": ("b43eb6eb4bcaa77e2ef247746257e9e381fb934d20aa7cd993c698a5b25b6e7a",
              "2d16d39d06f5f9a7345e8b292029f19ccebaf83d"),
}


def archive(version: str) -> Path:
    """The source archive of release ``version``, checked against its pinned digest."""
    path = RELEASES / f"imds-replica-{version}.tar.gz"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    expected, _commit = PINNED[version]
    if digest != expected:
        raise AssertionError(f"{path} has sha256 {digest}, pinned {expected}")
    return path


def release_python(version: str) -> Path:
    """The python of a venv holding release ``version`` (built from its archive)."""
    source = archive(version)
    digest = PINNED[version][0]
    root = Path(tempfile.gettempdir()) / f"imds-replica-{version}-{digest[:12]}"
    python = root / "venv" / "bin" / "python"
    with open(f"{root}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "ready").exists():
            return python
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        with tarfile.open(source) as tar:
            tar.extractall(root, filter="data")
        src = root / f"imds-replica-{version}"
        subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-c", str(src / "requirements.lock"), str(src)],
                       check=True, capture_output=True, timeout=600)
        (root / "ready").write_text(digest + "\n")
    return python


def run_release(python: Path, code: str, *args: str,
                cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` under the release's python (nothing of this checkout on its path)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(python), "-I", "-c", code, *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)
