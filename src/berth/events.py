"""The event log: what happened to containers, one JSON line each, for ``berth events``.

There is no daemon to stream events from, so every berth process (and every monitor) appends to
``<root>/events.log``; a line is written with a single ``write`` on an ``O_APPEND`` descriptor, so
concurrent writers never interleave. Readers filter by time and follow the file for new lines.
"""

from __future__ import annotations

import os
import time

from berth.oci import jsonc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

MAX_SIZE = 8 * 1024 * 1024  # past this the log restarts (the previous one kept as events.log.1)


def record(path: str, kind: str, action: str, actor_id: str, **attributes: Any) -> None:
    """Append one event; failures to log never fail the operation that happened."""
    line = jsonc.dumps({"Type": kind, "Action": action, "Actor": {"ID": actor_id, "Attributes": attributes},
                        "timeNano": time.time_ns()}) + "\n"
    try:
        if os.path.getsize(path) > MAX_SIZE:
            os.replace(path, path + ".1")
    except OSError:
        pass
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def read(path: str, since_ns: int = 0, until_ns: int | None = None,
         follow: Callable[[], bool] | None = None, poll: float = 0.1) -> Iterator[dict[str, Any]]:
    """Events from ``since_ns`` on, in order; with ``follow``, keep waiting for new ones until
    ``until_ns`` passes or ``follow()`` says to stop."""
    pos = 0
    buf = b""
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
                pos = f.tell()
        except FileNotFoundError:
            chunk = b""
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            event = jsonc.loads(line)
            if event["timeNano"] < since_ns:
                continue
            if until_ns is not None and event["timeNano"] > until_ns:
                return
            yield event
        if follow is None or (until_ns is not None and time.time_ns() > until_ns) or not follow():
            return
        time.sleep(poll)
