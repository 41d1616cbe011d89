"""The shipped systemd units: valid for systemd, and granting every path the server writes.

``ProtectSystem=strict`` makes the whole file system read-only except what the unit grants
(``StateDirectory=`` and friends, ``ReadWritePaths=``). The server writes its durable log
in ``--data-dir`` and its own log files in ``telemetry.log_dir`` (default
``<data-dir>.logs``): both must be granted, or every log line is lost on a real host.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

from imds_server._cli import build_parser, config_from_args
from imds_server.telemetry._serving import for_server
from tests._tools import require_tool

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
#: Directory settings and the root each names its directories under (system units).
ROOTS = {"StateDirectory": "/var/lib", "LogsDirectory": "/var/log",
         "CacheDirectory": "/var/cache", "RuntimeDirectory": "/run"}


def _settings(unit: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def granted_paths(unit: Path) -> list[PurePosixPath]:
    settings = _settings(unit)
    paths = []
    for key, root in ROOTS.items():
        for value in settings.get(key, []):
            paths += [PurePosixPath(root) / name for name in value.split()]
    for value in settings.get("ReadWritePaths", []):
        paths += [PurePosixPath(p.lstrip("-")) for p in value.split()]
    return paths


def written_paths(unit: Path) -> list[PurePosixPath]:
    """What ``imds-server serve`` with the unit's ExecStart writes: the data directory and
    the telemetry log directory, as the server itself computes them."""
    (exec_start,) = _settings(unit)["ExecStart"]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == "imds-server"
    args = build_parser().parse_args(argv[1:])
    config = config_from_args(args)
    telemetry = for_server(config)
    assert config.data_dir is not None
    assert telemetry.log_dir is not None
    return [PurePosixPath(config.data_dir), PurePosixPath(telemetry.log_dir)]


def _within(path: PurePosixPath, roots: list[PurePosixPath]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def test_the_unit_grants_every_path_the_server_writes() -> None:
    unit = UNITS / "imds-server.service"
    assert "ProtectSystem=strict" in unit.read_text()
    granted = granted_paths(unit)
    for path in written_paths(unit):
        assert _within(path, granted), f"{path} is written but the unit grants only {granted}"


def test_the_check_catches_a_log_directory_left_read_only(tmp_path: Path) -> None:
    # The 0.1.0 unit: StateDirectory=imds-server alone, logs defaulting next to it.
    unit = tmp_path / "imds-server.service"
    unit.write_text((UNITS / "imds-server.service").read_text().replace(
        "StateDirectory=imds-server imds-server.logs", "StateDirectory=imds-server"))
    granted = granted_paths(unit)
    assert [p for p in written_paths(unit) if not _within(p, granted)] == \
        [PurePosixPath("/var/lib/imds-server.logs")]


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze", "systemd")
    # verify checks that ExecStart exists: point it at this checkout's imds-server.
    server = Path(sys.executable).with_name("imds-server")
    for name in ("imds-server.service", "imds-server.socket"):
        text = (UNITS / name).read_text().replace("/opt/imds-replica/.venv/bin/imds-server",
                                                  str(server))
        (tmp_path / name).write_text(text)
    assert shutil.which(str(server)), server
    done = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / "imds-server.socket"),
                           str(tmp_path / "imds-server.service")],
                          capture_output=True, text=True, check=False)
    # verify exits 0 on warnings (an unknown key is only "ignoring"): any output fails.
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (done.stdout + done.stderr).strip(), done.stdout + done.stderr
