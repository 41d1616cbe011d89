"""``imds-server``: argparse subcommands.

``serve`` is here. Extension point: if the module ``imds_server.telemetry._commands`` can
be imported, its ``register(subparsers)`` adds its own subcommands (``probe``, ``logs``,
``collect``); each sets ``func`` (``args -> int``) with ``set_defaults`` as ``serve`` does.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from imds_replica import ConfigError, ImdsError

from ._config import ServerConfig, config_to_toml, load_config
from ._server import Server
from .identity import _commands as identity_commands

TELEMETRY_COMMANDS = "imds_server.telemetry._commands"
DISTRIBUTION = "imds-replica"
#: Top-level modules of optional dependencies -> the extra that installs them.
OPTIONAL_MODULES = {"duckdb": "query", "pyarrow": "query"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imds-server",
                                     description="Azure-compatible instance metadata service")
    parser.add_argument("--version", action="version", version=f"imds-server {version()}")
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
    serve.add_argument("--print-config", action="store_true",
                       help="print the effective configuration as TOML (a file --config "
                            "reads) and exit")
    test = serve.add_argument_group(
        "test mode", "a metadata service to test guest software against (docs/testing.md)")
    test.add_argument("--test-mode", action="store_true",
                      help="serve a test fleet with scheduled-event lifecycle, fault "
                           "injection and scenarios; every answer says so in a header")
    test.add_argument("--fleet", metavar="FILE",
                      help="the test fleet, JSON or TOML (default: the demo fleet)")
    test.add_argument("--time-scale", type=float, default=1.0, metavar="N",
                      help="run planned times N times faster (default 1)")
    test.add_argument("--allow-production-address", action="store_true",
                      help="let test mode listen on 169.254.169.254 (refused otherwise)")
    serve.set_defaults(func=_serve)
    _register_admin_commands(sub)
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
        if args.print_config:
            if telemetry is not None:  # its table with every default spelled out
                config = attrs.evolve(config, telemetry=telemetry.config.to_table())
            sys.stdout.write(config_to_toml(config))
            return 0
        check_data_dir(config.data_dir)
        test_mode = _test_mode(args, config)
    except ConfigError as exc:
        print(f"imds-server: bad configuration: {exc}", file=sys.stderr)
        return 2
    try:
        arguments = telemetry.server_arguments(config) if telemetry else {}
        if test_mode is not None:
            from .testmode import TestModeServer

            server: Server = TestModeServer(
                config, test_mode, allow_production=args.allow_production_address,
                **arguments)
        else:
            server = Server(config, **arguments)
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


def _test_mode(args: argparse.Namespace, config: ServerConfig) -> Any:
    """The ``TestMode`` of ``serve --test-mode`` (None without it); ConfigError if wrong."""
    if not args.test_mode:
        if args.fleet is not None or args.allow_production_address or args.time_scale != 1:
            raise ConfigError("--fleet, --time-scale and --allow-production-address need "
                              "--test-mode", key="test-mode")
        return None
    from .testmode import TestMode, load_fleet, refuse_production

    refuse_production([(config.listen.host, config.listen.port)],
                      forced=args.allow_production_address)
    return TestMode(load_fleet(args.fleet), time_scale=args.time_scale)


def _register_admin_commands(sub: Any) -> None:
    from ._adminctl import register

    register(sub)


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

            async def announce() -> None:
                # Only once answers are real: the data directory is locked and replayed
                # (a locked or foreign one fails before this line, never after it).
                await server.wait_ready()
                test_mode = getattr(server, "test_mode", None)
                if test_mode is not None:
                    await test_mode.seeded.wait()
                cfg = server.config
                host, port = server.vm_address[:2]
                ahost, aport = server.admin_address[:2]
                label = " (test mode)" if test_mode is not None else \
                    " (demo)" if cfg.demo else ""
                print(f"imds-server: serving VMs on {host}:{port}, admin on {ahost}:{aport}"
                      f"{label}", file=sys.stderr, flush=True)

            nursery.start_soon(announce)

            async def stop_on_signal() -> None:
                async for _ in signals:
                    server.shutdown()
                    return

            nursery.start_soon(stop_on_signal)
            await server.stopped.wait()
            nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ModuleNotFoundError as exc:
        message = missing_extra(exc)
        if message is None:
            raise
        print(f"imds-server {args.command}: {message}", file=sys.stderr)
        return 2


def version() -> str:
    """The installed distribution's version (the one ``pip`` and ``CHANGES.md`` name)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "unknown (not installed)"


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """One line naming the optional extra that provides a missing module, or None."""
    top = (exc.name or "").partition(".")[0]
    extra = OPTIONAL_MODULES.get(top)
    if extra is None:
        return None
    return (f"needs {top}, from the optional '{extra}' extra: "
            f"pip install '{DISTRIBUTION}[{extra}]'")


def check_data_dir(data_dir: Path | None) -> None:
    """Refuse a data directory that cannot be one before anything starts listening."""
    if data_dir is None:
        return
    for path in (data_dir, *data_dir.parents):
        if path.exists():
            if not path.is_dir():
                what = "is" if path == data_dir else f"is inside {path}, which is"
                raise ConfigError(f"{data_dir} {what} a file, not a directory "
                                  "(give a directory for the durable log; it is created "
                                  "if missing)", key="data-dir")
            return


if __name__ == "__main__":
    sys.exit(main())
