"""Docker's json-file log format: one JSON object per line, rotated by size.

A line is ``{"log": "text\\n", "stream": "stdout", "time": "RFC 3339 with nanoseconds"}``. Output
without a newline is flushed as a partial line once 16 KiB accumulate (as Docker does), or when
the stream ends. Rotation renames ``x.log`` to ``x.log.1`` (shifting older ones up to
``max_files - 1``) and starts a new file; readers following the log notice the new inode.
"""

from __future__ import annotations

import posix  # not os: this module runs in the supervisor too (see berth.monitor.loop)
import time

from berth.oci import jsonc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

PARTIAL = 16 * 1024


def timestamp(t: float | None = None) -> str:
    ns = time.time_ns() if t is None else int(t * 1e9)
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


class LogWriter:
    def __init__(self, path: str, max_size: int = 10 * 1024 * 1024, max_files: int = 3) -> None:
        self.path = path
        self.max_size = max_size
        self.max_files = max(1, max_files)
        self._fd = posix.open(path, posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT | posix.O_CLOEXEC, 0o640)
        self._size = posix.fstat(self._fd).st_size
        self._pending: dict[str, bytes] = {}

    def feed(self, stream: str, data: bytes) -> None:
        """Add raw output of ``stream``; complete lines are written at once."""
        buf = self._pending.get(stream, b"") + data
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            self._write(stream, buf[: nl + 1])
            buf = buf[nl + 1:]
        while len(buf) >= PARTIAL:
            self._write(stream, buf[:PARTIAL])
            buf = buf[PARTIAL:]
        self._pending[stream] = buf

    def flush(self) -> None:
        for stream, buf in self._pending.items():
            if buf:
                self._write(stream, buf)
        self._pending.clear()

    def _write(self, stream: str, chunk: bytes) -> None:
        line = jsonc.dumps({"log": chunk.decode("utf-8", "replace"), "stream": stream, "time": timestamp()})
        raw = (line + "\n").encode()
        if self.max_size > 0 and self._size and self._size + len(raw) > self.max_size:
            self._rotate()
        posix.write(self._fd, raw)
        self._size += len(raw)

    def _rotate(self) -> None:
        posix.close(self._fd)
        if self.max_files == 1:
            posix.truncate(self.path, 0)
        else:
            for i in range(self.max_files - 1, 0, -1):
                try:
                    posix.replace(self.path if i == 1 else f"{self.path}.{i - 1}", f"{self.path}.{i}")
                except FileNotFoundError:
                    pass
        self._fd = posix.open(self.path, posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT | posix.O_CLOEXEC, 0o640)
        self._size = 0

    def close(self) -> None:
        self.flush()
        posix.close(self._fd)


def read_entries(path: str, max_files: int = 3) -> list[dict[str, str]]:
    """Every entry still on disk, oldest first (rotated files, then the current one)."""
    entries = []
    for i in range(max_files - 1, -1, -1):
        name = path if i == 0 else f"{path}.{i}"
        try:
            with open(name, "rb") as f:
                for line in f:
                    if line.strip():
                        entries.append(jsonc.loads(line))
        except FileNotFoundError:
            continue
    return entries


def follow(path: str, stop: Callable[[], bool] | None = None, poll: float = 0.1) -> Iterator[dict[str, str]]:
    """Yield the entries of the current log file from its start, then each one appended, across
    rotations (a new inode at ``path``), until ``stop()`` is true and the file is read to its end."""
    fd = None
    ino = None
    buf = b""
    while True:
        if fd is None:
            try:
                fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
                ino = posix.fstat(fd).st_ino
            except FileNotFoundError:
                if stop is not None and stop():
                    return
                time.sleep(poll)
                continue
        chunk = posix.read(fd, 65536)
        if chunk:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    yield jsonc.loads(line)
            continue
        try:
            rotated = posix.stat(path).st_ino != ino
        except FileNotFoundError:
            rotated = True
        if rotated:
            posix.close(fd)
            fd = None
            continue
        if stop is not None and stop():
            posix.close(fd)
            return
        time.sleep(poll)
