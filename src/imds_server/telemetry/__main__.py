"""``python -m imds_server.telemetry COMMAND``: the telemetry commands without the server's
CLI (the same ones ``imds-server`` registers)."""

from __future__ import annotations

import argparse
import sys

from ._commands import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imds_server.telemetry")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
