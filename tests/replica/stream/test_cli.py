"""``imds-replica stream create|info`` and ``imds-replica publish`` against a real server."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from imds_replica import Event
from imds_replica._cli import main
from imds_replica._stream._wire import encode_event, stream_name
from tests._nats import NatsServer

from .conftest import fresh_cluster, in_thread

pytestmark = pytest.mark.integration
KEY = ["vms", "vm-1", "compute", "name"]


def _line(version: int, value: object = None, *, deleted: bool = False,
          key: list[str] = KEY) -> str:
    wire: dict[str, object] = {"source": "fleet", "key": key, "version": version}
    if deleted:
        wire["deleted"] = True
    else:
        wire["value"] = value
    return json.dumps(wire)


def test_stream_create_then_check(nats_server: NatsServer,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    cluster = fresh_cluster()
    base = ["stream", "create", "--nats", nats_server.url, "--cluster", cluster]
    assert main([*base, "--max-consumers", "50"]) == 0
    assert f"created {stream_name(cluster)}" in capsys.readouterr().out
    assert main([*base, "--max-consumers", "50"]) == 0
    assert "exists as wanted" in capsys.readouterr().out
    assert main([*base, "--max-consumers", "60"]) == 1
    assert "max_consumers: is 50, want 60" in capsys.readouterr().err
    assert main(["stream", "info", "--nats", nats_server.url, "--cluster", cluster]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["max_msgs_per_subject"] == 1
    assert info["config"]["discard"] == "new"


def test_bad_names_are_usage_errors(nats_server: NatsServer,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stream", "create", "--nats", nats_server.url, "--cluster", "Bad.Name",
                 "--max-consumers", "5"]) == 2
    assert "cluster" in capsys.readouterr().err
    assert main(["publish", "--nats", nats_server.url, "--cluster", "c", "--host", "a.b"]) == 2
    assert "host" in capsys.readouterr().err


def test_publish_counts_and_refuses(nats_server: NatsServer, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    cluster = fresh_cluster()
    assert main(["stream", "create", "--nats", nats_server.url, "--cluster", cluster,
                 "--max-consumers", "5"]) == 0
    capsys.readouterr()
    lines = [_line(2, "two"), _line(1, "one"),  # coalesced: 1 superseded
             _line(5, "x", key=["vms", "vm-2", "compute", "name"]),
             "not json", json.dumps({"source": "a.b", "key": ["k"], "version": 1, "value": 1})]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    base = ["publish", "--nats", nats_server.url, "--cluster", cluster, "--host", "h1"]
    assert main([*base, str(path)]) == 1
    captured = capsys.readouterr()
    assert "published 2, superseded 1, refused 2" in captured.out
    assert "line 4: bad JSON" in captured.err
    assert "line 5:" in captured.err
    # A replay of what is there already, and an older version: superseded, exit 0.
    path.write_text(_line(2, "two") + "\n" + _line(1, "old") + "\n")
    assert main([*base, str(path)]) == 0
    assert "published 0, superseded 2, refused 0" in capsys.readouterr().out
    # A newer one wins, from stdin.
    import sys
    stdin, sys.stdin = sys.stdin, io.StringIO(_line(3, deleted=True) + "\n")
    try:
        assert main([*base, "-"]) == 0
    finally:
        sys.stdin = stdin
    assert "published 1, superseded 0, refused 0" in capsys.readouterr().out


def test_concurrent_publishers_leave_the_lww_winner(nats_server: NatsServer) -> None:
    """Eight publishers race conflicting versions onto the same keys; each subject ends
    holding the greatest version (the LWW winner), whatever the interleaving."""
    import threading

    import trio

    from imds_replica._stream._bridge import Connection
    from imds_replica._stream._transport import ConnectOptions
    from imds_replica._stream._wire import subject

    from .conftest import create_stream, publish

    cluster = fresh_cluster()
    in_thread(create_stream, nats_server.url, cluster)
    keys = [("vms", f"vm-{i}", "compute", "name") for i in range(20)]
    reports = []

    def publisher(offset: int) -> None:
        events = [Event("fleet", key, (v * 8 + offset) % 97 + 1, f"p{offset}-{v}")
                  for v in range(5) for key in keys]
        reports.append(trio.run(publish, nats_server.url, cluster, events, "h1"))

    threads = [threading.Thread(target=publisher, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.refused == 0 for r in reports), reports
    everything = [Event("fleet", key, (v * 8 + off) % 97 + 1, f"p{off}-{v}")
                  for off in range(8) for v in range(5) for key in keys]

    async def check() -> None:
        conn = await Connection.open(ConnectOptions(servers=(nats_server.url,)))
        try:
            subjects = [subject(cluster, "h1", "fleet", k) for k in keys]
            current = await conn.last_messages(stream_name(cluster), subjects)
        finally:
            await conn.aclose()
        for key, held in zip(keys, current, strict=True):
            winner = max((e for e in everything if e.key == key),
                         key=lambda e: (e.version, e.source, e.digest))
            assert held is not None, key
            assert held[1] == encode_event(winner), key

    trio.run(check)


def _allow_lists(text: str) -> dict[str, list[str]]:
    """Per ``user:`` entry of a NATS config, every quoted subject it allows, in order."""
    users: dict[str, list[str]] = {}
    user = None
    for line in text.splitlines():
        if "user:" in line:
            user = line.split("user:")[1].split(",")[0].strip().strip('"')
            users[user] = []
        elif user is not None:
            users[user] += re.findall(r'"([^"]+)"', line.split("#")[0])
    return users


def test_permissions_print_the_deploy_configs_entries(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stream", "permissions", "--cluster", "west", "--source", "fleet",
                 "host-1", "host-2"]) == 0
    printed = _allow_lists(capsys.readouterr().out)
    deployed = _allow_lists((Path(__file__).parents[3] / "deploy" / "nats" /
                             "imds-west.conf").read_text())
    assert set(printed) == {"host-1", "host-2"}
    for host in printed:
        assert printed[host] == [s for s in deployed[host] if not s.endswith("change-me")]


def test_permissions_and_publish_refuse_colliding_consumer_names(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Host ``a`` with source ``b-c`` and host ``a-b`` with source ``c`` would share the
    consumer ``imds-a-b-c`` (either could delete the other's); ``x`` and ``x-all`` on one
    host would share ``imds-h-x-all``."""
    assert main(["stream", "permissions", "--cluster", "west", "--source", "b-c",
                 "--source", "c", "a", "a-b"]) == 2
    err = capsys.readouterr().err
    assert "'imds-a-b-c'" in err
    assert "host 'a' source 'b-c'" in err
    assert "host 'a-b' source 'c'" in err
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps({"source": s, "key": KEY, "version": 1, "value": 1})
                            + "\n" for s in ("x", "x-all")))
    assert main(["publish", "--nats", "nats://127.0.0.1:1", "--cluster", "west", "--host",
                 "h", str(path)]) == 2
    err = capsys.readouterr().err
    assert "'imds-h-x-all'" in err
    assert "source 'x-all'" in err
