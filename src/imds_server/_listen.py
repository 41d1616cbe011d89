"""Listening sockets: bound from an address, or inherited through systemd socket activation.

Socket activation (``sd_listen_fds``): the manager passes ``LISTEN_FDS`` sockets starting at
fd 3 to the process whose pid is ``LISTEN_PID``, and names them in ``LISTEN_FDNAMES``
(colon-separated, from ``FileDescriptorName=``). A socket named ``admin`` is the admin
listener; every other inherited socket is VM-facing. Because the manager keeps the sockets
open across our restarts, guests' connections wait in the kernel's queue meanwhile.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

import attrs

from imds_replica import ConfigError

SD_LISTEN_FDS_START = 3
ADMIN_NAME = "admin"


@attrs.frozen
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, key: str) -> Address:
        """``HOST:PORT`` or ``[V6]:PORT``; raises ``ConfigError`` naming ``key``."""
        host, sep, port = text.rpartition(":")
        if not sep or not host or not (port.isascii() and port.isdigit()) \
                or not 0 <= int(port) <= 65535:
            raise ConfigError(f"{text!r} is not HOST:PORT", key=key)
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_WILDCARDS = {"", "0.0.0.0", "::", "*"}
_LOOPBACK_PREFIXES = ("127.", "::1", "localhost")


def check_separate(vm: Address, admin: Address) -> None:
    """Refuse an admin listener a VM could reach: the same address, a wildcard, or the same
    non-loopback host (a different port on 169.254.169.254 is still reachable by guests).
    Loopback hosts may share with different ports: that is the development setup."""
    if admin.host in _WILDCARDS:
        raise ConfigError(f"{admin} listens on every address, including the VM-facing one",
                          key="admin-listen")
    if vm.port != 0 and (vm.host, vm.port) == (admin.host, admin.port):
        raise ConfigError(f"{admin} is also the VM-facing address", key="admin-listen")
    if admin.host == vm.host and not admin.host.startswith(_LOOPBACK_PREFIXES):
        raise ConfigError(f"{admin.host} is the VM-facing host; guests could reach the "
                          "admin API", key="admin-listen")


def bind(address: Address, *, backlog: int = 4096) -> socket.socket:
    """A listening TCP socket on ``address`` (SO_REUSEADDR, so a restart can rebind).

    Raises ``OSError`` whose message names the address (``cannot listen on HOST:PORT:
    Address already in use``)."""
    try:
        infos = socket.getaddrinfo(address.host or None, address.port,
                                   type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise _cannot_listen(address, exc) from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise _cannot_listen(address, exc) from exc
    return sock


def _cannot_listen(address: Address, exc: OSError) -> OSError:
    reason = exc.strerror or str(exc)
    return OSError(exc.errno, f"cannot listen on {address}: {reason}")


def set_ttl(sock: socket.socket, ttl: int) -> None:
    """IP TTL (hop limit on IPv6) for packets this socket sends; 0 leaves the default.

    At 1 an answer cannot cross a router or a container bridge (the AWS token rule)."""
    if ttl <= 0:
        return
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)


def inherited(environ: MutableMapping[str, str] | None = None,
              pid: int | None = None) -> dict[str, list[socket.socket]]:
    """Sockets passed by the service manager, by role (``vm`` / ``admin``); empty if none.

    The variables are removed afterwards so that child processes do not claim them."""
    env = os.environ if environ is None else environ
    count = env.get("LISTEN_FDS")
    owner = env.get("LISTEN_PID")
    names = env.get("LISTEN_FDNAMES", "")
    for var in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(var, None)
    if not count or not owner or not count.isdigit() or not owner.isdigit():
        return {}
    if int(owner) != (os.getpid() if pid is None else pid):
        return {}
    labels = names.split(":") if names else []
    roles: dict[str, list[socket.socket]] = {}
    for i in range(int(count)):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        role = ADMIN_NAME if i < len(labels) and labels[i] == ADMIN_NAME else "vm"
        roles.setdefault(role, []).append(sock)
    return roles


def peer_host(sockaddr: object) -> str:
    """The caller's address as the ``("callers", ADDRESS)`` registers spell it."""
    host = sockaddr[0] if isinstance(sockaddr, tuple) else str(sockaddr)
    if host.startswith("::ffff:") and "." in host:  # IPv4 on a dual-stack socket
        host = host[7:]
    return str(host)
