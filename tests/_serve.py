"""Start a real ``imds-server serve`` process the way systemd does (socket activation).

The test keeps the listening sockets, so connections made while no server runs wait in the
kernel's queue, and no port can be taken by someone else between choosing and binding it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from pathlib import Path

import trio


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


async def spawn_server(vm: socket.socket, admin: socket.socket, data: Path,
                       *extra: str) -> trio.Process:
    """``imds-server serve --demo`` with ``vm`` and ``admin`` as fds 3 and 4 (vm:admin)."""
    high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 50) for s in (vm, admin)]
    # A tiny exec wrapper, as a service manager does it: the sockets on fds 3 and 4, and
    # LISTEN_PID naming the process that will run the server (exec keeps the pid).
    wrapper = (f"import os, sys; os.dup2({high[0]}, 3); os.dup2({high[1]}, 4); "
               "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='2', "
               "LISTEN_FDNAMES='vm:admin'); "
               "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
    # The bound addresses in the flags are decoys: inherited sockets take precedence.
    cmd = [sys.executable, "-c", wrapper, "-m", "imds_server", "serve", "--demo",
           "--data-dir", str(data), "--rate-limit", "0",
           "--listen", "127.0.0.1:1", "--admin-listen", "127.0.0.1:2", *extra]
    try:
        return await trio.lowlevel.open_process(cmd, pass_fds=high)
    finally:
        for fd in high:
            os.close(fd)
