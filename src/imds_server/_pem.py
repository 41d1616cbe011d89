"""Writing key material: whole, durable, readable by the owner only."""

from __future__ import annotations

import os
from pathlib import Path


def key_dir(data_dir: Path | None) -> Path | None:
    """Where generated keys live: ``DATA.keys`` beside the data directory (the log
    directory holds only the log, and refuses to start in a directory with other files)."""
    return None if data_dir is None else data_dir.with_name(data_dir.name + ".keys")


def write_private_pem(path: Path, data: bytes) -> None:
    """Write a secret whole and durably: a temporary 0600 file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
