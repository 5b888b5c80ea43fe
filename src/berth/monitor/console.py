"""The console socket a runtime sends a container's pty master to (``--console-socket``).

Like ``berth.runtime.console.Receiver`` but on ``_socket`` and ``posix`` alone: ``socket``, ``os``
and ``tempfile`` would cost the long-lived supervisor memory for the one call it needs. The runtime
connects and sends the master (SCM_RIGHTS) before its ``create`` exits, so taking it afterwards
never waits long.
"""

from __future__ import annotations

import _socket
import posix  # not os (see berth.monitor.loop)
import sys

SCM_RIGHTS = 1


class Receiver:
    def __init__(self) -> None:
        # A short path: sun_path holds 107 bytes and state directories can be deeper.
        self.path = f"/tmp/berth-console-{posix.getpid()}-{posix.urandom(6).hex()}.sock"
        self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        self._sock.bind(self.path)
        posix.chmod(self.path, 0o600)
        self._sock.listen(1)

    def master(self) -> int:
        """Take the master the runtime sent (it connected before its create exited)."""
        self._sock.settimeout(2.0)
        fd, _ = self._sock._accept()  # type: ignore[attr-defined]
        conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
        try:
            conn.settimeout(2.0)
            _msg, ancillary, _flags, _addr = conn.recvmsg(1024, _socket.CMSG_SPACE(4))
        finally:
            conn.close()
        for level, kind, data in ancillary:
            if level == _socket.SOL_SOCKET and kind == SCM_RIGHTS and len(data) >= 4:
                master = int.from_bytes(data[:4], sys.byteorder)
                posix.set_inheritable(master, False)
                return master
        raise OSError(5, "the container sent no terminal")

    def close(self) -> None:
        self._sock.close()
        try:
            posix.unlink(self.path)
        except OSError:
            pass
