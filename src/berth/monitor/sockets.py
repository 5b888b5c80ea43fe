"""The supervisor's sockets: unix SOCK_SEQPACKET listeners (its own ``RUNROOT/monitor.sock``, each
container's ``STATE_DIR/attach``) and the monitor's side of the attach protocol that
``berth.monitor.attach`` describes. Apart from that module, whose client side (``relay``) would only
cost the long-lived supervisor memory.

Socket paths go through ``/proc/self/fd/N/NAME`` of a directory descriptor: a state directory's
path may be longer than the 107 bytes ``sun_path`` holds.
"""

from __future__ import annotations

import _socket
import posix  # not os (see berth.monitor.loop)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from berth.monitor.loop import Loop

NAME = "attach"
MAX_MESSAGE = 1 << 17


def at(directory: str, fn: Callable[[str], None], name: str = NAME) -> None:
    """Call ``fn`` with a short path naming ``directory/name``."""
    fd = posix.open(directory, posix.O_PATH | posix.O_DIRECTORY | posix.O_CLOEXEC)
    try:
        fn(f"/proc/self/fd/{fd}/{name}")
    finally:
        posix.close(fd)


def seqpacket(fileno: int | None = None) -> _socket.socket:
    kind = _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC
    if fileno is None:
        return _socket.socket(_socket.AF_UNIX, kind)
    return _socket.socket(_socket.AF_UNIX, kind, 0, fileno)


def connect(directory: str, name: str = NAME) -> _socket.socket:
    """A SOCK_SEQPACKET connection to ``directory/name``; OSError when nobody listens there."""
    sock = seqpacket()
    try:
        at(directory, sock.connect, name)
    except OSError:
        sock.close()
        raise
    return sock


def listen(directory: str, name: str = NAME) -> _socket.socket:
    """A SOCK_SEQPACKET listener at ``directory/name``, replacing what a previous one left there."""
    try:
        posix.unlink(f"{directory}/{name}")
    except FileNotFoundError:
        pass
    listener = seqpacket()
    at(directory, listener.bind, name)
    listener.listen(64)
    return listener


def accept(listener: _socket.socket) -> _socket.socket | None:
    try:
        conn, _ = listener._accept()  # type: ignore[attr-defined]  # _socket's accept
    except OSError:
        return None
    return seqpacket(conn)


class Server:
    """The monitor's side: a listener and the connected clients, watched by the supervisor's loop.
    ``on_message(data)`` gets each client message; ``on_leave()`` runs when a client goes."""

    def __init__(self, directory: str, loop: Loop, owner: Any, on_message: Callable[[bytes], None],
                 on_leave: Callable[[], None]) -> None:
        self.loop, self.owner_obj = loop, owner
        self.on_message, self.on_leave = on_message, on_leave
        self.listener = listen(directory)
        self.listener.setblocking(False)
        self.clients: dict[int, _socket.socket] = {}
        self.owner: int | None = None  # the client that asked to start
        loop.add_reader(self.listener.fileno(), self._accept, owner)

    def _accept(self) -> None:
        client = accept(self.listener)
        if client is None:
            return
        client.settimeout(2.0)  # a client that stops reading is dropped, not waited for
        fd = client.fileno()
        self.clients[fd] = client
        self.loop.add_reader(fd, lambda: self._read(fd), self.owner_obj)

    def _read(self, fd: int) -> None:  # a client dropped earlier in the round is not called (Loop)
        try:
            data = self.clients[fd].recv(MAX_MESSAGE)
        except OSError:
            data = b""
        if not data:
            self.drop(fd)
            self.on_leave()
            return
        if data == b"s":
            self.owner = fd
        self.on_message(data)

    def broadcast(self, tag: bytes, data: bytes) -> None:
        for fd, client in list(self.clients.items()):
            try:
                client.sendall(tag + data)
            except OSError:
                self.drop(fd)

    def finish(self, code: int) -> bool:
        """Tell every client the exit status and let them go; return whether the owner heard it."""
        self.broadcast(b"x", str(code).encode())
        heard = self.owner is not None and self.owner in self.clients
        for fd in list(self.clients):
            self.drop(fd)
        self.owner = None
        return heard

    def drop(self, fd: int) -> None:
        client = self.clients.pop(fd, None)
        if client is not None:
            self.loop.forget(fd)
            client.close()

    def close(self) -> None:
        for fd in list(self.clients):
            self.drop(fd)
        self.loop.forget(self.listener.fileno())
        self.listener.close()
