"""The engine's side of the supervisor (``berth.monitor.main``): hand it a container, starting it
when none answers, and tell a container that has a live supervisor from an orphaned one.

Starting is guarded by ``RUNROOT/monitor.lock``: two ``berth run -d`` racing start one supervisor,
and a supervisor about to leave takes the same lock before it unlinks its socket.
"""

from __future__ import annotations

import os

from berth.monitor import LOCK, SOCKET
from berth.monitor.sockets import connect

NAME = b"berth-monitor"

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket


def request(runroot: str, verb: str, state_dir: str, program: str) -> str:
    """Ask the supervisor of ``runroot`` to ``take`` or ``adopt`` ``state_dir``; return its answer
    (``started PID``, ``adopted PID`` or ``error TEXT``). ``program`` is ``berth-monitor``'s path,
    started when no supervisor answers."""
    for _ in range(3):
        sock = _connect(runroot) or _start(runroot, program)
        if sock is None:
            continue
        try:
            sock.sendall(f"{verb} {state_dir}".encode())
            answer = sock.recv(65536)
        except OSError:
            answer = b""
        finally:
            sock.close()
        return answer.decode(errors="replace") or "error the monitor exited before starting the container"
    return "error the container monitor could not be started"


def _connect(runroot: str) -> _socket.socket | None:
    try:
        return connect(runroot, SOCKET)
    except OSError:
        return None


def _start(runroot: str, program: str) -> _socket.socket | None:
    """Under the lock: connect if another command started a supervisor meanwhile, else start one
    (in a session of its own) and wait until it listens."""
    from berth.fsutil import file_lock

    with file_lock(os.path.join(runroot, LOCK)):
        sock = _connect(runroot)
        if sock is not None:
            return sock
        r, w = os.pipe()
        os.set_inheritable(w, True)
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        env["BERTH_SYNC_FD"] = str(w)
        null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        try:
            os.posix_spawn(program, [program, runroot], env, setsid=True, file_actions=[
                (os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, null, 2)])
        finally:
            os.close(w)
            os.close(null)
        with os.fdopen(r, "rb") as f:
            f.readline()
        return _connect(runroot)


_boot_time: float | None = None


def _started_at(ticks: int) -> float:
    """A start time in clock ticks since boot, as wall-clock seconds."""
    global _boot_time
    if _boot_time is None:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    _boot_time = float(line.split()[1])
                    break
            else:
                _boot_time = 0.0
    return _boot_time + ticks / os.sysconf("SC_CLK_TCK")


def supervised(state_dir: str) -> bool:
    """Whether the supervisor named by ``STATE_DIR/monitor.pid`` is alive: that pid runs
    ``berth-monitor`` and started before it wrote the file (so a recycled pid does not count)."""
    path = os.path.join(state_dir, "monitor.pid")
    try:
        with open(path, "rb") as f:
            pid = int(f.read())
            written = os.fstat(f.fileno()).st_mtime
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (OSError, ValueError):
        return False
    comm_end = data.rindex(b")")
    rest = data[comm_end + 2:].split()
    if data[data.index(b"(") + 1:comm_end] != NAME or rest[0] in (b"Z", b"X"):
        return False
    return _started_at(int(rest[19])) <= written + 1.0
