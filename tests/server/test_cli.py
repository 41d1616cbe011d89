from __future__ import annotations

import importlib.util

import pytest

from imds_server._cli import TELEMETRY_COMMANDS, build_parser, config_from_args


def test_serve_flags_map_to_settings() -> None:
    args = build_parser().parse_args(["serve", "--listen", "127.0.0.5:80", "--rate-limit", "0",
                                      "--demo", "--data-dir", "var/x"])
    config = config_from_args(args)
    assert str(config.listen) == "127.0.0.5:80"
    assert config.rate_limit == 0.0
    assert config.demo
    assert str(config.data_dir) == "var/x"


def test_telemetry_commands_only_when_importable() -> None:
    parser = build_parser()
    present = importlib.util.find_spec(TELEMETRY_COMMANDS.rpartition(".")[0]) is not None
    if not present:
        with pytest.raises(SystemExit):
            parser.parse_args(["probe"])
