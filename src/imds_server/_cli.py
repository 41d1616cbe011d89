"""``imds-server``: argparse subcommands.

``serve`` is here. Extension point: if the module ``imds_server.telemetry._commands`` can
be imported, its ``register(subparsers)`` adds its own subcommands (``probe``, ``logs``,
``collect``); each sets ``func`` (``args -> int``) with ``set_defaults`` as ``serve`` does.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import signal
import sys
from collections.abc import Sequence
from typing import Any

import trio

from imds_replica import ConfigError, ImdsError

from ._config import ServerConfig, load_config
from ._server import Server
from .identity import _commands as identity_commands

TELEMETRY_COMMANDS = "imds_server.telemetry._commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imds-server",
                                     description="Azure-compatible instance metadata service")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the VM-facing and admin listeners")
    serve.add_argument("--listen", metavar="HOST:PORT",
                       help="VM-facing address (default 127.0.0.1:8080)")
    serve.add_argument("--admin-listen", metavar="HOST:PORT",
                       help="admin address, never VM-reachable (default 127.0.0.1:8081)")
    serve.add_argument("--data-dir", metavar="DIR", help="directory of the durable log")
    serve.add_argument("--config", metavar="FILE.toml", help="settings file (flags win)")
    serve.add_argument("--demo", action="store_const", const=True, default=None,
                       help="seed the demo fleet (once) into the data directory")
    serve.add_argument("--rate-limit", type=float, metavar="N",
                       help="requests/s per VM (default 5; 0 disables)")
    serve.set_defaults(func=_serve)
    identity_commands.register(sub)  # token-service
    if importlib.util.find_spec(TELEMETRY_COMMANDS.rpartition(".")[0]) is not None \
            and importlib.util.find_spec(TELEMETRY_COMMANDS) is not None:
        importlib.import_module(TELEMETRY_COMMANDS).register(sub)
    return parser


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return load_config(args.config, {
        "listen": args.listen, "admin-listen": args.admin_listen, "data-dir": args.data_dir,
        "demo": args.demo, "rate-limit": args.rate_limit,
    })


def _serve(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        telemetry = _telemetry_for(config)
    except ConfigError as exc:
        print(f"imds-server: bad configuration: {exc}", file=sys.stderr)
        return 2
    try:
        server = Server(config, **(telemetry.server_arguments(config) if telemetry else {}))
        trio.run(serve_until_signalled, server, telemetry)
    except Exception as exc:
        # Failures inside trio.run arrive wrapped in (nested) exception groups by the
        # nurseries; a single one is what went wrong.
        cause = _single(exc)
        if not isinstance(cause, (ImdsError, OSError)):
            raise
        # An OSError names its object: the address (``cannot listen on HOST:PORT: ...``)
        # or the file or directory (the data directory, the log directory).
        print(f"imds-server: {cause}", file=sys.stderr)
        return 1
    return 0


def _single(exc: BaseException) -> BaseException:
    """The one exception inside single-member exception groups (else ``exc`` itself)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _telemetry_for(config: ServerConfig) -> Any:
    """The server's telemetry (``imds_server.telemetry``), or None if it is not installed."""
    if importlib.util.find_spec(TELEMETRY_COMMANDS.rpartition(".")[0]) is None:
        return None
    from imds_server.telemetry._serving import for_server

    return for_server(config)


async def serve_until_signalled(server: Server, telemetry: Any = None) -> None:
    """Run until SIGTERM or SIGINT, then drain gracefully."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            if telemetry is not None:  # first, so the server's first lines are kept
                await nursery.start(telemetry.run)
                telemetry.watch(server)
            await nursery.start(server.run)
            cfg = server.config
            host, port = server.vm_address[:2]
            ahost, aport = server.admin_address[:2]
            print(f"imds-server: serving VMs on {host}:{port}, admin on {ahost}:{aport}"
                  f"{' (demo)' if cfg.demo else ''}", file=sys.stderr, flush=True)

            async def stop_on_signal() -> None:
                async for _ in signals:
                    server.shutdown()
                    return

            nursery.start_soon(stop_on_signal)
            await server.stopped.wait()
            nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
