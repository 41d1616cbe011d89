"""System tools some tests need (installed by scripts/install-tools)."""

from __future__ import annotations

import os
import shutil

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
