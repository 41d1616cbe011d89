from __future__ import annotations

import os
import socket

import pytest

from imds_server import Address, inherited, set_ttl
from imds_server._listen import peer_host


def test_address_parse() -> None:
    assert Address.parse("[::1]:80", key="listen") == Address("::1", 80)
    assert str(Address("::1", 80)) == "[::1]:80"
    assert str(Address("127.0.0.1", 80)) == "127.0.0.1:80"


def test_set_ttl() -> None:
    with socket.socket() as sock:
        set_ttl(sock, 1)
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 1
        default = socket.socket()
        set_ttl(default, 0)
        assert default.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) > 1
        default.close()


def test_peer_host_unmaps_ipv4() -> None:
    assert peer_host(("::ffff:127.0.0.2", 5, 0, 0)) == "127.0.0.2"
    assert peer_host(("127.0.0.3", 5)) == "127.0.0.3"


def test_inherited_needs_our_pid_and_clears_env() -> None:
    env = {"LISTEN_FDS": "1", "LISTEN_PID": "1", "LISTEN_FDNAMES": "vm"}
    assert inherited(env, pid=2) == {}
    assert env == {}  # never passed on to children


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="needs /proc")
def test_inherited_sockets_by_name() -> None:
    # Put two listening sockets on fds 3 and 4, as the service manager does.
    saved = [os.dup(3) if _open(3) else None, os.dup(4) if _open(4) else None]
    a, b = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    try:
        os.dup2(a.fileno(), 3)
        os.dup2(b.fileno(), 4)
        env = {"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid()),
               "LISTEN_FDNAMES": "admin:vm"}
        roles = inherited(env)
        assert [s.getsockname() for s in roles["admin"]] == [a.getsockname()]
        assert [s.getsockname() for s in roles["vm"]] == [b.getsockname()]
        for socks in roles.values():
            for s in socks:
                s.detach()
    finally:
        a.close()
        b.close()
        for fd, copy in zip((3, 4), saved, strict=True):
            if copy is None:
                os.close(fd)
            else:
                os.dup2(copy, fd)
                os.close(copy)


def _open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
