"""``imds-server token-service``: the reference regional token service (see ``_service``)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from imds_replica import ConfigError

from .._listen import Address, bind
from ._local import DEFAULT_LIFETIME, LocalIssuer
from ._placement import PlacementFile
from ._service import TokenServiceApp, load_credentials, serve_token_service

DEFAULT_LISTEN = "127.0.0.1:8443"


def register(sub: Any) -> None:
    cmd = sub.add_parser("token-service", help="run the regional managed-identity token "
                         "service (hosts use it with identity-issuer = \"remote\")")
    cmd.add_argument("--listen", metavar="HOST:PORT", default=DEFAULT_LISTEN,
                     help=f"address (default {DEFAULT_LISTEN}); put TLS in front of it")
    cmd.add_argument("--data-dir", metavar="DIR", type=Path,
                     help="keeps identity/signing-key.pem (made on first start)")
    cmd.add_argument("--signing-key", metavar="KEY.pem", type=Path,
                     help="RSA private key (PEM) instead of the data directory's")
    cmd.add_argument("--issuer-url", metavar="URL",
                     help="the tokens' iss (default http://LISTEN/identity)")
    cmd.add_argument("--token-lifetime", metavar="SECONDS", type=int,
                     default=DEFAULT_LIFETIME, help="default 86400")
    cmd.add_argument("--credentials", metavar="FILE", type=Path, required=True,
                     help="hosts allowed to ask: one 'NAME SECRET' per line")
    cmd.add_argument("--placement", metavar="FILE", type=Path,
                     help="JSON host -> VM -> identities: a host gets tokens only for its "
                     "own VMs' identities (re-read when it changes); without it any host "
                     "may ask for any identity")
    cmd.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        listen = Address.parse(args.listen, key="listen")
        if args.signing_key is None and args.data_dir is None:
            raise ConfigError("give --data-dir or --signing-key (the key must outlive the "
                              "process, or tokens stop verifying)", key="signing-key")
        issuer = LocalIssuer.from_config(
            key_path=args.signing_key, key_dir=args.data_dir,
            issuer=args.issuer_url or f"http://{listen}/identity",
            lifetime=args.token_lifetime)
        placement = PlacementFile(args.placement) if args.placement is not None else None
        app = TokenServiceApp(issuer, load_credentials(args.credentials), placement=placement)
        sock = bind(listen)
    except ConfigError as exc:
        print(f"imds-server token-service: bad configuration: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"imds-server token-service: {exc}", file=sys.stderr)
        return 1
    trio.run(_serve, sock, app)
    return 0


async def _serve(sock: Any, app: TokenServiceApp) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_token_service, sock, app)
            host, port = sock.getsockname()[:2]
            print(f"imds-server token-service: serving on {host}:{port} "
                  f"(issuer {app.issuer.issuer})", file=sys.stderr, flush=True)
            if app.placement is None:
                print("imds-server token-service: no --placement: every host with a "
                      "credential may ask for any VM's identities", file=sys.stderr,
                      flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return
