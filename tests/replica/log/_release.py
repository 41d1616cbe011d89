"""An earlier release of imds-replica, installed from its git tag into its own venv.

The venv is built once per tagged commit under the temp directory (``git archive`` of the
tag, ``python -m venv``, ``pip install`` of the tagged source constrained by the tag's own
``requirements.lock``) and reused by later runs; a lock file keeps concurrent runs from
building it twice.
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def _missing(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message + " — CI must have it", pytrace=False)
    pytest.skip(message)


def release_python(tag: str) -> Path:
    """The python of a venv holding release ``tag`` (skips locally, fails under CI, when
    git or the tag is not there)."""
    git = shutil.which("git")
    if git is None:
        _missing("git not installed (apt-get install git)")
    found = subprocess.run([git, "-C", str(REPO), "rev-parse", "--verify", "-q",
                            f"{tag}^{{commit}}"], capture_output=True, text=True)
    if found.returncode != 0:
        _missing(f"tag {tag} is not in {REPO} (git fetch --tags)")
    commit = found.stdout.strip()
    root = Path(tempfile.gettempdir()) / f"imds-replica-{tag}-{commit[:12]}"
    python = root / "venv" / "bin" / "python"
    with open(f"{root}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "ready").exists():
            return python
        shutil.rmtree(root, ignore_errors=True)
        (root / "src").mkdir(parents=True)
        archive = subprocess.run([git, "-C", str(REPO), "archive", "--format=tar", commit],
                                 capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(root / "src", filter="data")
        subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-c", str(root / "src" / "requirements.lock"), str(root / "src")],
                       check=True, capture_output=True, timeout=600)
        (root / "ready").write_text(commit + "\n")
    return python


def run_release(python: Path, code: str, *args: str,
                cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` under the release's python (nothing of this checkout on its path)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(python), "-I", "-c", code, *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)
