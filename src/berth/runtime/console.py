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


class Receiver:
    """A console socket of our own, for ``run`` in the foreground with a terminal and no
    ``--console-socket``: the runtime itself then holds the master and relays the user's terminal."""

    def __init__(self) -> None:
        import socket
        import tempfile

        self._dir = tempfile.mkdtemp(prefix="berth-console-")
        self.path = os.path.join(self._dir, "console.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(1)

    def master(self) -> int:
        """Accept the runtime child's connection and take the master it sends, with the caller's
        terminal size already set on it (see inherit_size)."""
        import socket

        conn, _ = self._sock.accept()
        try:
            _msg, fds, _flags, _addr = socket.recv_fds(conn, 1024, 1)
        finally:
            conn.close()
            self.close()
        if not fds:
            raise OSError(5, "the container sent no terminal")
        inherit_size(fds[0])
        return fds[0]

    def close(self) -> None:
        self._sock.close()
        try:
            os.unlink(self.path)
            os.rmdir(self._dir)
        except OSError:
            pass


def caller_size() -> dict[str, int] | None:
    """The caller's terminal size as an OCI ``consoleSize``, or None when stdin is no terminal."""
    try:
        size = os.get_terminal_size(0)
    except OSError:
        return None
    return {"height": size.lines, "width": size.columns}


def inherit_size(master: int) -> None:
    """Give the container's terminal the caller's size — before the container starts, so that a
    program reading it at once never sees 0x0."""
    size = caller_size()
    if size is not None:
        fcntl.ioctl(master, TIOCSWINSZ, struct.pack("HHHH", size["height"], size["width"], 0, 0))


def relay(master: int, pid: int, wait: Any) -> int:
    """Copy the user's terminal to the container's and back until ``pid`` exits; return its status.

    Our stdin is put in raw mode (when it is a terminal) so keys reach the container untouched,
    and restored afterwards whatever happens. The size is the caller's to set first (inherit_size).
    """
    import select
    import termios
    import threading
    import tty

    saved = None
    if os.isatty(0):
        saved = termios.tcgetattr(0)
        tty.setraw(0)
    result: list[int] = []

    def reap() -> None:
        result.append(wait(pid))

    waiter = threading.Thread(target=reap, daemon=True)
    waiter.start()
    stdin_open = True
    try:
        while True:
            watch = [master, 0] if stdin_open else [master]
            ready, _, _ = select.select(watch, [], [], 0.1)
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    data = b""
                if not data:
                    break
                os.write(1, data)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    os.write(master, data)
                else:
                    stdin_open = False
            if not waiter.is_alive() and not select.select([master], [], [], 0)[0]:
                break
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        os.close(master)
    waiter.join()
    return result[0]
