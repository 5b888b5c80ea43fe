"""Terminals for containers: a pty from the container's own devpts, its master handed over a
unix socket (``--console-socket``, SCM_RIGHTS) to whoever holds the user's side (conmon, berth)."""

from __future__ import annotations

import fcntl
import os
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

TIOCGPTPEER = 0x5441
TIOCSPTLCK = 0x40045431
TIOCSCTTY = 0x540E
TIOCSWINSZ = 0x5414


def open_pty(master: int, process: dict[str, Any]) -> int:
    """Unlock the pty whose master is ``master`` (an open /dev/pts/ptmx); return its slave.

    TIOCGPTPEER opens the slave from the master itself, so no path inside the container is trusted.
    """
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    slave: int = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    size = process.get("consoleSize")
    if size:
        fcntl.ioctl(master, TIOCSWINSZ, struct.pack("HHHH", size["height"], size["width"], 0, 0))
    uid = process["user"]["uid"]
    if uid:
        os.fchown(slave, uid, -1)
    return slave


def send_master(console_fd: int, master: int, name: str) -> None:
    import socket

    sock = socket.socket(fileno=console_fd)
    try:
        socket.send_fds(sock, [name.encode()], [master])
    finally:
        sock.close()
        os.close(master)


def take_terminal(slave: int) -> None:
    """Make ``slave`` the controlling terminal and the stdio of this (session leader) process."""
    fcntl.ioctl(slave, TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def connect(path: str) -> int:
    """Connect to the console socket in the runtime's own mount namespace, before any pivot."""
    import socket

    from berth.errors import InvalidArgument

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        raise InvalidArgument(f"--console-socket {path}: {e.strerror}") from None
    return sock.detach()
