"""What a new user hits in the first hour: each rough edge of issue 17, as a test.

Commands run as a user runs them (a real process), except where the point is a message
only (then in-process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import msgpack
import pytest
import trio

from imds_replica import ConfigError, FileLog, MemoryLog, open_replica
from imds_server import load_config
from imds_server._admin import AdminApi
from imds_server._cli import main
from imds_server._config import config_to_toml
from imds_server._request import Request
from imds_server.telemetry._config import TelemetryConfig

REPLICA_MAIN = "import sys; from imds_replica._cli import main; sys.exit(main())"
LOOPBACK = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]


def run(*args: str, cwd: Path | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imds_server", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout, check=False)


# -- start-up -----------------------------------------------------------------------------
def test_a_file_as_data_dir_is_named_not_errno_17(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# not a log\n")
    done = run("serve", "--data-dir", "README.md", *LOOPBACK, cwd=tmp_path)
    assert done.returncode == 2
    assert "data-dir: README.md is a file, not a directory" in done.stderr
    assert "Errno" not in done.stderr
    assert "serving" not in done.stderr


def test_locked_data_dir_fails_without_claiming_to_serve(tmp_path: Path) -> None:
    async def hold_and_start() -> subprocess.CompletedProcess[str]:
        log = FileLog(tmp_path / "data")
        async with open_replica(log):  # holds the directory's lock
            return await trio.to_thread.run_sync(
                lambda: run("serve", "--data-dir", str(tmp_path / "data"), *LOOPBACK))

    done = trio.run(hold_and_start)
    assert done.returncode == 1, done.stderr
    assert "serving VMs" not in done.stderr
    assert "lock" in done.stderr.lower() or "in use" in done.stderr.lower(), done.stderr


def test_foreign_data_dir_fails_without_claiming_to_serve(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    done = run("serve", "--data-dir", str(tmp_path), *LOOPBACK)
    assert done.returncode == 1
    assert "not an imds-replica log directory" in done.stderr
    assert "serving VMs" not in done.stderr


# -- configuration --------------------------------------------------------------------------
@pytest.mark.parametrize(("key", "suggested"), [
    ("rate_limit", "rate-limit"), ("max_watchers_per_vm", "max-watchers-per-vm"),
    ("--data-dir", "data-dir"), ("admin-lisen", "admin-listen")])
def test_unknown_key_says_did_you_mean(tmp_path: Path, key: str, suggested: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'"{key}" = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"did you mean '{suggested}'?" in str(info.value)


def test_print_config_reads_back_as_the_same_config(tmp_path: Path) -> None:
    source = tmp_path / "in.toml"
    source.write_text('rate-limit = 2\ncluster = "eu-1"\ndata-dir = "/var/lib/x \\"y\\""\n'
                      '[telemetry]\nlog_dir = "/var/log/imds"\n[telemetry.warm]\n'
                      'collector_url = "http://c:8090"\n')
    done = run("serve", "--config", str(source), "--print-config", "--listen", "127.0.0.9:80")
    assert done.returncode == 0, done.stderr
    assert "max-watch-timeout = 300.0" in done.stdout  # defaults are spelled out too
    printed = tmp_path / "printed.toml"
    printed.write_text(done.stdout)
    expected = load_config(source, {"listen": "127.0.0.9:80"})
    # [telemetry] is printed as its effective table: every default, keys spelled with "-".
    assert "[telemetry.cold]\nmax-file-bytes = 16777216\n" in done.stdout
    assert 'log-dir = "/var/log/imds"' in done.stdout
    again = load_config(printed)
    assert attrs.evolve(again, telemetry={}) == attrs.evolve(expected, telemetry={})
    assert (TelemetryConfig.from_mapping(again.telemetry, cluster="eu-1", machine="m")
            == TelemetryConfig.from_mapping(expected.telemetry, cluster="eu-1", machine="m"))
    assert again.telemetry == TelemetryConfig.from_mapping(
        expected.telemetry, cluster="eu-1", machine="m").to_table()
    assert config_to_toml(again) == done.stdout


# -- commands --------------------------------------------------------------------------------
def test_both_clis_have_version() -> None:
    server = run("--version")
    replica = subprocess.run([sys.executable, "-c", REPLICA_MAIN, "--version"],
                             capture_output=True, text=True, check=False)
    for done, name in ((server, "imds-server"), (replica, "imds-replica")):
        assert done.returncode == 0, done.stderr
        words = done.stdout.split()
        assert words[0] == name, done.stdout
        assert words[1][0].isdigit(), done.stdout


def test_probe_not_a_url_exits_2_and_no_success_prints_no_nan() -> None:
    bad = run("probe", "notaurl")
    assert bad.returncode == 2
    assert "'notaurl' is not an http:// or https:// URL" in bad.stderr
    down = run("probe", "http://127.0.0.1:9/metadata/instance", "--timeout", "1")
    assert down.returncode == 1
    assert "nan" not in down.stdout
    assert "latency n/a (no probe succeeded)" in down.stdout


@pytest.mark.parametrize(("command", "expected"), [
    ("probe", ["Exit status", "(default: 10.0)", "(default: 2.0)"]),
    ("collect", ["Receive the warm path", "(default: 127.0.0.1:8090)", "store directory"]),
])
def test_help_has_descriptions_and_defaults(command: str, expected: list[str]) -> None:
    done = run(command, "--help")
    assert done.returncode == 0
    for text in expected:
        assert text in done.stdout


def test_missing_optional_dependency_is_one_line_naming_the_extra(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "duckdb", None)  # import duckdb now fails
    assert main(["logs", "query", "--store", str(tmp_path), "--report", "status"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert "needs duckdb, from the optional 'query' extra: pip install " \
           "'imds-replica[query]'" in err


# -- admin error texts -----------------------------------------------------------------------
async def _post(body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
    async with open_replica(MemoryLog()) as replica:
        api = AdminApi(clock=lambda: 0.0)
        api.replica = replica
        response = await api.handle(Request("POST", "/events", {"content-type": content_type},
                                            body))
        return response.status, json.loads(response.body)


EVENT = {"events": [{"source": "agent", "key": ["vms", "v", "compute", "name"],
                     "version": 1, "value": "n"}]}


async def test_form_content_type_is_not_named_as_the_format() -> None:
    # curl -d sends a form type: the body is read as JSON, and the message says so.
    status, body = await _post(b'{"events": [{"source": }]}',
                               "application/x-www-form-urlencoded")
    assert status == 400
    assert "not valid application/x-www-form-urlencoded" not in body["error"]
    assert body["error"].startswith("body is not valid JSON (sent as "
                                    "application/x-www-form-urlencoded)")


@pytest.mark.parametrize("kind", ["application/msgpack", "application/x-msgpack",
                                  "application/vnd.msgpack"])
async def test_msgpack_content_types_are_read_as_msgpack(kind: str) -> None:
    status, body = await _post(msgpack.packb(EVENT), kind)
    assert (status, body["changed"]) == (200, 1)


@pytest.mark.parametrize("garbage", [b"\xc1", b"\x92\x01", b"\x01\x02"])
async def test_msgpack_garbage_has_a_reason(garbage: bytes) -> None:
    status, body = await _post(garbage, "application/msgpack")
    assert status == 400
    message = body["error"]
    assert message.startswith(("body is not valid msgpack: ", "body must be {")), message
    assert not message.rstrip().endswith(":"), message  # a reason, never empty


async def test_event_errors_show_json_values() -> None:
    bad = {"events": [{**EVENT["events"][0], "version": True}]}  # type: ignore[dict-item]
    status, body = await _post(json.dumps(bad).encode(), "application/json")
    assert status == 400
    assert "version: true must be an integer" in body["error"]
