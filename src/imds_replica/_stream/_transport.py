"""What the NATS bridge speaks in, without importing nats: options, results, errors.

The bridge (``_bridge``) maps every nats-py exception to these at the edge, so nothing else
in the package ever sees (or imports) a third-party exception.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from .._errors import ConfigError, Unavailable
from ._cursor import Delivery


class TransportError(Unavailable):
    """NATS could not be reached, or answered with an error (never the caller's data)."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code  # the JetStream error code, when the server gave one


class NotFound(TransportError):
    """No such stream, consumer or message."""


#: JetStream's "wrong last sequence" (the compare-and-set lost).
WRONG_LAST_SEQUENCE = 10071


def _servers(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError("must be a non-empty list of nats:// or tls:// URLs", key="servers")
    for url in value:
        if not isinstance(url, str) or not url.startswith(("nats://", "tls://")):
            raise ConfigError(f"{url!r} is not a nats:// or tls:// URL", key="servers")
    return tuple(value)


@attrs.frozen
class ConnectOptions:
    """How to reach and authenticate to NATS (each host has its own credentials)."""

    servers: tuple[str, ...] = attrs.field(converter=_servers)
    name: str | None = None
    user: str | None = None
    password: str | None = None
    #: A NATS creds file (JWT + nkey seed; needs the ``nkeys`` package).
    credentials: Path | None = None
    #: A CA bundle to verify the servers' TLS certificates against.
    tls_ca: Path | None = None
    connect_timeout: float = 5.0
    #: Seconds between pings; two unanswered and the connection counts as dead.
    ping_interval: float = 10.0
    reconnect_wait: float = 1.0
    #: Prefix of this client's reply subjects (``_INBOX_<host>`` for a host, so that its
    #: NATS permissions can allow exactly its own replies).
    inbox_prefix: str | None = None

    @property
    def first_connect_bound(self) -> float:
        """Seconds to give a first connection: one attempt per server (nats-py would retry
        it for ever, so a wrong password or CA would hang instead of being reported)."""
        return self.connect_timeout * len(self.servers) + 1.0

    def __attrs_post_init__(self) -> None:
        if (self.user is None) != (self.password is None):
            raise ConfigError("user and password go together", key="user")
        if self.credentials is not None and self.user is not None:
            raise ConfigError("give either credentials or user/password", key="credentials")


@attrs.frozen
class Fetched:
    """One fetch: deliveries, or ``idle`` (heartbeats, no message), or neither (silence)."""

    deliveries: tuple[Delivery, ...] = ()
    idle: bool = False


@attrs.frozen
class Published:
    """The fate of one publish: its stream sequence, or the error code refusing it."""

    seq: int | None
    duplicate: bool = False
    error: str | None = None
    code: int | None = None
