"""The attach socket: how ``berth attach``, ``run -it`` and ``start -a`` reach a container whose stdio
the monitor holds (conmon's ``attach`` socket plays this role for Podman).

The supervisor listens on ``STATE_DIR/attach``, a unix SOCK_SEQPACKET socket, so every message keeps its
boundaries and needs no length header; its first byte says what it is:

- client → monitor: ``i`` + bytes for the container's stdin, ``r`` + ``"ROWS COLS"`` to resize the
  terminal, ``e`` when the client's stdin ended, ``s`` to start a container created to wait for its
  first client (``attach_first``: no output is lost between start and attach);
- monitor → client: ``1`` + stdout bytes, ``2`` + stderr bytes (a terminal's output is all ``1``),
  ``x`` + the exit status in decimal, after which the monitor closes the connection.

The client that sent ``s`` owns the container's end: if it is still there to hear the exit status,
it removes a ``--rm`` container itself (so ``berth run --rm`` returns with the container gone);
otherwise (it detached, or died) the monitor runs its ``exit_command``.

The monitor's side is ``berth.monitor.sockets.Server``.

The client side (``relay``) runs in the ``berth`` process: it copies the caller's stdin to the socket
and the socket to the caller's stdout and stderr until the container exits or the user types the
detach keys (ctrl-p ctrl-q by default, with a terminal only, as Docker does).
"""

from __future__ import annotations

import os

from berth.monitor.sockets import MAX_MESSAGE

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"


def parse_detach_keys(text: str | None) -> bytes:
    """Docker's ``--detach-keys``: comma-separated ``ctrl-X`` or single characters (``ctrl-p,ctrl-q``).
    An empty value means the default, as with Docker."""
    from berth.errors import InvalidArgument

    out = bytearray()
    for key in (text or DEFAULT_DETACH_KEYS).split(","):
        if len(key) == 1:
            out.append(ord(key))
            continue
        name = key.lower().removeprefix("ctrl-")
        if not key.lower().startswith("ctrl-") or len(name) != 1:
            raise InvalidArgument(f"invalid --detach-keys {text!r}: expected keys like ctrl-p,ctrl-q or a,b")
        if "a" <= name <= "z":
            out.append(ord(name) - ord("a") + 1)
        elif name in "@[\\]^_":
            out.append("@[\\]^_".index(name) + (0 if name == "@" else 26))
        else:
            raise InvalidArgument(f"invalid --detach-keys {text!r}: no ctrl-{name} key")
    return bytes(out)


class _DetachScanner:
    """Finds the detach sequence in keyboard input, even split across reads; input that only
    looked like its start is passed on once it turns out not to be."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self.held = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes to forward, whether the user detached)."""
        out = bytearray()
        for byte in data:
            candidate = self.held + bytes([byte])
            if self.keys.startswith(candidate):
                self.held = candidate
                if candidate == self.keys:
                    return bytes(out), True
                continue
            out += candidate
            self.held = b""
        return bytes(out), False


def relay(sock: _socket.socket, *, stdin: bool, tty: bool, detach_keys: bytes, start: bool = False,
          stdin_fd: int = 0, stdout_fd: int = 1, stderr_fd: int = 2) -> int | None:
    """Copy stdio between the caller and the container until it exits (its status) or the user
    detaches (None). With ``tty`` and a terminal on ``stdin_fd``, that terminal is put in raw mode
    (restored whatever happens) and its size follows the user's window."""
    import select

    saved = None
    old_winch = None
    if tty and os.isatty(stdin_fd):
        import signal
        import termios
        import tty as ttymod

        saved = termios.tcgetattr(stdin_fd)

        def resize(*_: object) -> None:
            try:
                cols, rows = os.get_terminal_size(stdin_fd)
                sock.sendall(f"r{rows} {cols}".encode())
            except OSError:
                pass

        resize()
        try:
            old_winch = signal.signal(signal.SIGWINCH, resize)
        except ValueError:  # not the main thread: the size is set once
            pass
        if stdin:
            ttymod.setraw(stdin_fd, termios.TCSANOW)  # not TCSAFLUSH: keep what was typed ahead
    if start:
        sock.sendall(b"s")
    scanner = _DetachScanner(detach_keys) if tty and stdin else None
    reading = stdin
    try:
        while True:
            watch = [sock.fileno(), stdin_fd] if reading else [sock.fileno()]
            ready = select.select(watch, [], [])[0]
            if sock.fileno() in ready:
                try:
                    msg = sock.recv(MAX_MESSAGE)
                except OSError:
                    msg = b""
                if not msg:
                    raise Lost("the container's monitor closed the attach socket without an exit status")
                tag, data = msg[:1], msg[1:]
                if tag == b"x":
                    return int(data)
                _write_all(stderr_fd if tag == b"2" else stdout_fd, data)
            if reading and stdin_fd in ready:
                data = os.read(stdin_fd, 65536)
                if not data:
                    reading = False
                    sock.sendall(b"e")
                    continue
                if scanner is not None:
                    data, detached = scanner.feed(data)
                    if data:
                        sock.sendall(b"i" + data)
                    if detached:
                        return None
                else:
                    sock.sendall(b"i" + data)
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        if old_winch is not None:
            import signal

            signal.signal(signal.SIGWINCH, old_winch)
        sock.close()


class Lost(Exception):
    """The monitor went away without telling the exit status."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
