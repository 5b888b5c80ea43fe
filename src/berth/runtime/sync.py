"""The parent ↔ child handshake of ``create`` and ``exec``: line messages over two pipes.

Pipes rather than a socketpair because importing ``socket`` costs start-up time. A message is one
line: a tag character and an optional JSON payload. The child reports an error as ``E`` with the
error's class name and text, so the parent re-raises it with the right exit code.
"""

from __future__ import annotations

import os

from berth import errors
from berth.oci import jsonc as json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Channel:
    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._buf = b""

    def send(self, tag: str, payload: Any = None) -> None:
        line = tag + (json.dumps(payload) if payload is not None else "") + "\n"
        try:
            os.write(self.write_fd, line.encode())
        except BrokenPipeError:
            # The other side is gone, most often after reporting why: raise that, not the pipe.
            while True:
                got, payload = self.recv()
                if got == "E":
                    raise _error(payload) from None
                if got == "":
                    raise errors.BerthError("container init exited before it was ready") from None

    def recv(self) -> tuple[str, Any]:
        """The next message; ("", None) when the other side closed without a word."""
        while b"\n" not in self._buf:
            chunk = os.read(self.read_fd, 65536)
            if not chunk:
                return "", None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        text = line.decode()
        return text[0], (json.loads(text[1:]) if len(text) > 1 else None)

    def expect(self, tag: str) -> Any:
        """The payload of the next message, which must be ``tag``; the other side's error raised."""
        got, payload = self.recv()
        if got == "E":
            raise _error(payload)
        if got != tag:
            raise errors.BerthError("container init exited before it was ready"
                                    if got == "" else f"container init: unexpected message {got!r}")
        return payload

    def send_error(self, exc: BaseException) -> None:
        if isinstance(exc, errors.BerthError):
            kind, message = type(exc).__name__, str(exc)
        elif isinstance(exc, OSError):
            kind = "BerthError"
            text = exc.strerror or str(exc)
            message = text if exc.filename is None else f"{exc.filename}: {text}"
        else:
            kind, message = "BerthError", f"{type(exc).__name__}: {exc}"
        try:
            self.send("E", {"kind": kind, "message": message})
        except OSError:
            pass

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def _error(payload: dict[str, str]) -> errors.BerthError:
    """The error the other side reported, as its class (and so its exit code)."""
    cls = getattr(errors, payload["kind"], errors.BerthError)
    return cls(payload["message"])


def pair() -> tuple[Channel, Channel]:
    """Two connected ends: (parent's, child's)."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    return Channel(r1, w2), Channel(r2, w1)
