from __future__ import annotations

import socket

import pytest

from imds_server._cli import build_parser, config_from_args, main


def test_serve_flags_map_to_settings() -> None:
    args = build_parser().parse_args(["serve", "--listen", "127.0.0.5:80", "--rate-limit", "0",
                                      "--demo", "--data-dir", "var/x"])
    config = config_from_args(args)
    assert str(config.listen) == "127.0.0.5:80"
    assert config.rate_limit == 0.0
    assert config.demo
    assert str(config.data_dir) == "var/x"


def test_telemetry_commands_are_registered() -> None:
    # imds_server.telemetry is part of this distribution: its subcommands must be there.
    parser = build_parser()
    for argv in (["probe", "http://127.0.0.1/"], ["logs", "fetch", "--from", "http://x"],
                 ["collect", "--store", "s"]):
        assert callable(parser.parse_args(argv).func), argv


def test_an_address_in_use_is_named_not_a_traceback(
        capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--listen", f"127.0.0.1:{port}", "--admin-listen",
                     "127.0.0.1:0"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in err
