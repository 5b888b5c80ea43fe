"""``berth-monitor RUNROOT``: the supervisor of every container started under ``RUNROOT``.

One process holds all the running containers' stdio, logs, exit codes, health checks and restart
policies, multiplexed by one event loop (``berth.monitor.loop``): its memory is shared by them all,
rather than one interpreter per container. It listens on ``RUNROOT/monitor.sock`` (SOCK_SEQPACKET,
one request per connection, see ``berth.monitor.client``):

- ``take STATE_DIR`` → ``started <init pid>`` or ``error <text>``: start the container that
  ``STATE_DIR/monitor.json`` describes and supervise it;
- ``adopt STATE_DIR`` → ``adopted <pid>``: resume supervising a running container whose
  supervisor died (its output, health checks, the wait for its end).

It leaves once it has had no container for ``LINGER`` seconds, so no daemon idles; under
``RUNROOT/monitor.lock`` (which the engine holds while it starts a supervisor) it unlinks its
socket first, then serves what was already queued. A crash leaves the containers running (see
``berth.monitor.container``); the next ``berth`` command that notices starts a new supervisor that
adopts them. A container with a terminal is hung up by a crash: its pty master lived here.

What it learns about a container lands in files of ``STATE_DIR``, written atomically, which the
engine reads:

- ``exit.json`` — ``{"exitCode", "finishedAt", "oomKilled", "restartCount"}`` after each exit
  (``exitCode`` -1 with an ``error`` when the container was adopted and its status is unknown);
- ``health.json`` — health status and the last results, when a health check is configured;
- ``monitor.pid`` — this process, while it supervises the container (removed once it is done for
  good), so the engine can tell a supervised container from an orphaned or finished one;
- ``attach`` — the socket ``berth attach`` connects to (``berth.monitor.attach``);
- ``stdout.fifo``, ``stderr.fifo`` — the container's output on its way here.

``monitor.json`` fields: ``id``, ``bundle``, ``runtime`` (argv prefix of an OCI runtime with runc's
command line), ``log_path``, ``log_max_size``, ``log_max_files``, ``terminal``, ``restart``
(``{"name": "no|on-failure|always|unless-stopped", "max": N}``), ``health`` (``{"test": argv,
"interval", "timeout", "retries", "start_period"}`` in seconds) and ``cgroup`` (the container's
``linux.cgroupsPath``, to read OOM kills before the runtime deletes the cgroup). Optional:
``stdin`` (keep the container's stdin open for attach clients; a pipe, or the terminal),
``stdin_once`` (close it when a client's stdin ends), ``attach_first`` (after create, report
``started`` and wait for a client's start message before starting, so it sees all the output),
``events`` (where to record die/oom events) and ``exit_command`` (an argv run, detached, once the
container has exited for good: ``--rm``; not when the client that started it heard the exit
status, as that client does the removal).
"""

from __future__ import annotations

import _signal
import posix  # not os, whose import costs the supervisor ~180 KiB (see berth.monitor.loop)
import sys

from berth.monitor import LOCK, SOCKET, sockets
from berth.monitor.container import Container
from berth.monitor.loop import Loop

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    from collections.abc import Callable

    from berth.monitor.loop import Timer

LINGER = 1.0  # seconds without containers before leaving
SUBREAPER = b"BERTH_MONITOR_SUBREAPER"  # set once the process is a subreaper


class Supervisor:
    def __init__(self, runroot: str) -> None:
        self.runroot = runroot
        self.loop = Loop(self._error)
        self.containers: dict[str, Container] = {}
        self.conns: dict[int, _socket.socket] = {}
        self.listener: _socket.socket | None = sockets.listen(runroot, SOCKET)
        self.listener.setblocking(False)
        self.loop.add_reader(self.listener.fileno(), self._accept)
        self.idle: Timer | None = None
        self.finished = False

    def _error(self, e: BaseException) -> None:
        """An error in the supervisor's own work: noted, and the loop goes on."""
        from berth.monitor.logfile import timestamp

        with open(f"{self.runroot}/monitor.err", "a") as f:
            f.write(f"{timestamp()} {posix.getpid()} {type(e).__name__}: {e}\n")

    def run(self) -> None:
        self._check_idle()
        while not self.finished:
            self.loop.run_once()

    # ------------------------------------------------------------------ requests

    def _accept(self) -> None:
        assert self.listener is not None
        while (conn := sockets.accept(self.listener)) is not None:
            self._watch(conn)

    def _watch(self, conn: _socket.socket) -> None:
        fd = conn.fileno()
        self.conns[fd] = conn
        self.loop.add_reader(fd, lambda: self._request(fd))

    def _request(self, fd: int) -> None:
        conn = self.conns[fd]
        self.loop.forget(fd)  # one request per connection
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        verb, _, state_dir = data.decode(errors="replace").partition(" ")

        def reply(text: str) -> None:
            if self.conns.pop(fd, None) is None:  # answered already
                return
            try:
                conn.send(text.encode())
            except OSError:  # the asker is gone; the container lives on regardless
                pass
            conn.close()
            self._check_idle()

        try:
            if not data:
                self.conns.pop(fd)
                conn.close()
                self._check_idle()
            elif verb in ("take", "adopt") and state_dir:
                self._serve(verb, state_dir, reply)
            else:
                reply(f"error unknown request {data[:40]!r}")
        except Exception as e:
            reply(f"error {e}")

    def _serve(self, verb: str, state_dir: str, reply: Callable[[str], None]) -> None:
        held = self.containers.get(state_dir)
        if held is not None:
            reply(f"adopted {held.pid}" if verb == "adopt" else "error the container is already supervised")
            return
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        c = Container(self.loop, state_dir, self._gone)
        self.containers[state_dir] = c
        if verb == "take":
            c.start(reply)
        else:
            c.adopt()
            reply(f"adopted {c.pid}")

    def _gone(self, c: Container) -> None:
        self.containers.pop(c.dir, None)
        self._check_idle()

    # ------------------------------------------------------------------ leaving

    def _check_idle(self) -> None:
        if not self.containers and not self.conns and self.idle is None:
            self.idle = self.loop.call_later(LINGER, self._leave)

    def _leave(self) -> None:
        """Leave if still idle: under the lock, so no ``berth`` command can be between finding our
        socket and connecting to it, unlink it; serve what had queued already."""
        self.idle = None
        if self.containers or self.conns:
            return
        if self.listener is not None:
            import fcntl

            lock = posix.open(f"{self.runroot}/{LOCK}", posix.O_RDWR | posix.O_CREAT | posix.O_CLOEXEC, 0o600)
            try:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a supervisor is being started or asked for: stay a while
                    self.idle = self.loop.call_later(0.2, self._leave)
                    return
                try:
                    posix.unlink(f"{self.runroot}/{SOCKET}")
                except FileNotFoundError:
                    pass
                self._accept()
                self.loop.forget(self.listener.fileno())
                self.listener.close()
                self.listener = None
            finally:
                posix.close(lock)
        if not self.conns:
            self.finished = True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: berth-monitor RUNROOT\n")
        return 2
    if posix.environ.get(SUBREAPER) != b"1":
        # Being a subreaper (the containers' inits become our children) takes prctl, which takes
        # ctypes: set it, then exec ourselves afresh so the long-lived process never loads ctypes
        # (the attribute survives execve).
        from berth.kernel.syscalls import PR_SET_CHILD_SUBREAPER, prctl

        prctl(PR_SET_CHILD_SUBREAPER, 1)
        posix.execve(sys.argv[0], [sys.argv[0], *args], {**posix.environ, SUBREAPER: b"1"})
    # What the supervisor's children get (Loop.spawn passes posix.environ): not our own settings.
    del posix.environ[SUBREAPER]
    sync = int(posix.environ.pop(b"BERTH_SYNC_FD", b"-1"))
    # Whatever else the starting process let us inherit (a caller's pipes) must not be held open
    # for as long as we supervise.
    if sync > 3:
        posix.closerange(3, sync)
    posix.closerange(max(3, sync + 1), 1 << 20)
    _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)
    runroot = args[0] if args[0].startswith("/") else f"{posix.getcwd()}/{args[0]}"
    supervisor = Supervisor(runroot)
    if sync >= 0:
        posix.write(sync, b"ready\n")
        posix.close(sync)
    import gc

    gc.collect()
    gc.freeze()  # what start-up made stays put: no copying of it by later collections
    supervisor.run()
    return 0
