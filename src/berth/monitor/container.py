"""One container under the supervisor: its life as a state machine the event loop drives.

``STATE_DIR/monitor.json`` describes it (see ``berth.monitor.main``). The life of one run:
``runtime create`` (its stdio on the FIFOs ``stdout.fifo``/``stderr.fifo``, or a pty) → held for
the first attach client when ``attach_first`` → ``runtime start`` → running (output to the log and
attach clients, health checks) → the init exits → half a second for the last output → OOM check,
``runtime delete`` → ``exit.json`` → the restart policy: back-off then create again, or done.

Nothing here blocks for long: runtime commands are child processes whose exits the loop reports.

The container's side of each FIFO is opened O_RDWR (as containerd's shim does): it is then a
reader of its own pipe, so if the supervisor dies the container never gets SIGPIPE — its writes
block once the pipe is full, until a new supervisor ``adopt``s it and reads on. An adopted init is
not our child: its exit is seen through a pidfd and its status is unknown (``exitCode`` -1). What
lived only in the dead supervisor is lost: an interactive container's stdin (a pipe) reads its end,
and a terminal's master is gone, which hangs the container's terminal up (SIGHUP).
"""

from __future__ import annotations

import posix  # not os, whose import costs the supervisor ~180 KiB (see berth.monitor.loop)
import sys
import time

from berth.monitor.logfile import LogWriter, timestamp
from berth.monitor.sockets import Server
from berth.oci import jsonc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from berth.monitor.loop import Loop, Timer

STREAMS = ("stdout", "stderr")
GRACE = 0.5  # seconds to read the last output after the init exits
ATTACH_WAIT = 60.0  # seconds an attach_first container waits for its client
UNKNOWN = "exit status unknown: the container's monitor died and another adopted it"
HEALTH_OUTPUT = 4096  # bytes of a health check's output kept, as Docker


def write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(jsonc.dumps(obj))
    posix.replace(tmp, path)


def _pipe_from_child() -> tuple[int, int]:
    """A pipe a child writes into: only the supervisor's read end is non-blocking (a child whose
    stdout did not block would fail with EAGAIN as soon as the pipe filled)."""
    r, w = posix.pipe2(posix.O_CLOEXEC)
    posix.set_blocking(r, False)
    return r, w


def _drain(fd: int, limit: int = 65536) -> bytes:
    """What a non-blocking descriptor holds now."""
    out = b""
    while len(out) < limit:
        try:
            chunk = posix.read(fd, 65536)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        out += chunk
    return out


def _shared_keys(obj: Any) -> Any:
    """``obj`` with its dicts' keys interned: the JSON parser gives each container its own copies of
    the same dozen keys, ~1 KiB of the supervisor's memory per container."""
    if isinstance(obj, dict):
        return {sys.intern(k): _shared_keys(v) for k, v in obj.items()}
    return obj


def _exists(path: str) -> bool:
    try:
        posix.stat(path)
    except OSError:
        return False
    return True


def _last_line(data: bytes) -> str:
    lines = data.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


class Container:
    def __init__(self, loop: Loop, state_dir: str, on_done: Callable[[Container], None]) -> None:
        self.loop = loop
        self.dir = state_dir
        self.on_done = on_done
        with open(f"{state_dir}/monitor.json", "rb") as f:
            self.cfg: dict[str, Any] = _shared_keys(jsonc.loads(f.read()))
        self.id: str = self.cfg["id"]
        self.runtime: list[str] = list(self.cfg["runtime"])
        self.log = LogWriter(self.cfg["log_path"], self.cfg.get("log_max_size", 10 * 1024 * 1024),
                             self.cfg.get("log_max_files", 3))
        self.reply: Callable[[str], None] | None = None  # the engine waiting for "started"/"error"
        self.restarts = 0
        self.delay = 0.1
        self.pid = 0
        self.pidfd: int | None = None  # an adopted init's
        self.status: int | None = None  # the init's exit status, once it exited
        self.running = False  # started, and the exit not yet handled
        self.started = 0.0
        self.streams: dict[int, str] = {}
        self.master: int | None = None  # the pty, with a terminal
        self.stdin: int | None = None  # where attach clients' input goes: a pipe, or the pty
        self.pending_input = b""
        self.stdin_ended = False  # a client's stdin ended: close the container's once fed
        self.held: Timer | None = None  # waiting for the first attach client's start
        self.grace: Timer | None = None
        self.health: dict[str, Any] | None = None
        self.health_timer: Timer | None = None
        self.run_id = 0  # health checks of an earlier run are ignored
        self.done = False
        self.attach = Server(state_dir, loop, self, self._client_message, self._client_left)

    def _path(self, name: str) -> str:
        return f"{self.dir}/{name}"

    def note_error(self, e: BaseException) -> None:
        """Append ``e`` to ``monitor.err`` beside the container's state."""
        try:
            with open(self._path("monitor.err"), "a") as f:
                f.write(f"{timestamp()} {type(e).__name__}: {e}\n")
        except OSError:
            pass

    def fault(self, e: BaseException) -> None:
        """An unexpected error in one of our callbacks: note it beside the state, and give up on
        this run if it had not started, or on the container if its state is gone (``rm``); the
        others in the supervisor carry on."""
        self.note_error(e)
        if self.done:
            return
        if self.reply is not None:
            self._fail(str(e) or type(e).__name__)
        elif not _exists(self.dir):
            self._done()

    # ------------------------------------------------------------------ runtime commands

    def _runtime(self, args: list[str], then: Callable[[int, str], None], *, stdout: int | None = None,
                 stderr: int | None = None, stdin: int | None = None) -> None:
        """Run ``runtime ARGS``; ``then(status, last line of its errors)`` once it exits."""
        err_r = err_w = None
        if stderr is None:
            err_r, err_w = _pipe_from_child()
            stderr = err_w
        null = posix.open("/dev/null", posix.O_WRONLY | posix.O_CLOEXEC)
        try:
            pid = self.loop.spawn([*self.runtime, *args], stdout=null if stdout is None else stdout,
                                  stderr=stderr, stdin=stdin)
        finally:
            posix.close(null)
            if err_w is not None:
                posix.close(err_w)

        def exited(status: int) -> None:
            text = ""
            if err_r is not None:
                text = _last_line(_drain(err_r))
                posix.close(err_r)
            then(status, text)

        self.loop.watch_child(pid, exited, self)

    # ------------------------------------------------------------------ starting

    def start(self, reply: Callable[[str], None] | None) -> None:
        """create (+ wait for the attach client) + start; ``reply`` hears ``started PID`` or
        ``error TEXT`` (None for a restart)."""
        self.reply = reply
        self.run_id += 1
        self.status = None
        self.running = False
        try:
            if reply is not None:  # the engine tells a supervised container by this file
                write_json(self._path("monitor.pid"), posix.getpid())
            self._create()
        except Exception as e:
            self._fail(str(e) or type(e).__name__)

    def _create(self) -> None:
        in_r = None
        for name in STREAMS:
            path = self._path(name + ".fifo")
            try:
                posix.unlink(path)
            except FileNotFoundError:
                pass
            posix.mkfifo(path, 0o600)
        reads = [posix.open(self._path(n + ".fifo"), posix.O_RDONLY | posix.O_NONBLOCK | posix.O_CLOEXEC)
                 for n in STREAMS]
        writes = [posix.open(self._path(n + ".fifo"), posix.O_RDWR | posix.O_CLOEXEC) for n in STREAMS]
        self.streams = dict(zip(reads, STREAMS, strict=True))
        args = ["create", "--bundle", self.cfg["bundle"], "--pid-file", self._path("pid")]
        console = None
        if self.cfg.get("terminal"):
            from berth.monitor.console import Receiver

            console = Receiver()
            args += ["--console-socket", console.path]
        elif self.cfg.get("stdin"):
            in_r, self.stdin = posix.pipe2(posix.O_CLOEXEC)
            posix.set_blocking(self.stdin, False)
        try:
            self._runtime([*args, self.id], lambda status, _: self._created(status, console),
                          stdout=writes[0], stderr=writes[1], stdin=in_r)
        except BaseException:
            if console is not None:
                console.close()
            raise
        finally:
            for fd in (*writes, in_r):
                if fd is not None:
                    posix.close(fd)

    def _created(self, status: int, console: Any) -> None:
        master = None
        if console is not None:
            try:
                master = console.master() if status == 0 else None
            finally:
                console.close()
        if status != 0:
            text = ""
            for fd in self.streams:
                text = _last_line(_drain(fd)) or text
            self._fail(text or f"runtime create exited with status {status}")
            return
        with open(self._path("pid")) as f:
            self.pid = int(f.read())
        self.loop.watch_child(self.pid, self._init_exited, self)
        if master is not None:
            self.master = master
            posix.set_blocking(master, False)
            self.streams[master] = "stdout"
            if self.cfg.get("stdin"):
                self.stdin = master
        for fd in self.streams:
            self._watch(fd)
        if self.reply is not None and self.cfg.get("attach_first"):
            self._announce()
            self.held = self.loop.call_later(ATTACH_WAIT, self._release, self)
            return
        self._start()

    def _release(self) -> None:
        """The first client asked to start, left, or never came: start."""
        if self.held is not None:
            self.held.cancel()
            self.held = None
            self._start()

    def _start(self) -> None:
        if self.status is not None:  # killed before it started
            self.running = True
            self._ending()
            return
        self._runtime(["start", self.id], self._started)

    def _started(self, status: int, text: str) -> None:
        if status != 0:
            self.loop.unwatch_child(self.pid)
            self._close_streams()
            self._runtime(["delete", "--force", self.id], lambda *_: None)
            self._fail(text or f"runtime start exited with status {status}")
            return
        self.started = time.monotonic()
        self.running = True
        self._announce()
        self._health_start()
        if self.status is not None:  # it exited before start returned
            self._ending()

    def _announce(self) -> None:
        if self.reply is not None:
            reply, self.reply = self.reply, None
            reply(f"started {self.pid}")

    def _fail(self, message: str) -> None:
        """This run could not start: tell the engine, or (a restart) record it and stop."""
        self._close_streams()
        if self.reply is not None:
            reply, self.reply = self.reply, None
            reply(f"error {message}")
            self._done()
            return
        try:
            self._exited({"exitCode": 127, "finishedAt": timestamp(), "oomKilled": False,
                          "restartCount": self.restarts, "error": message})
        finally:
            self._done()
        self._exit_command()

    # ------------------------------------------------------------------ adoption

    def adopt(self) -> None:
        """Take over a running container whose supervisor died: reopen its FIFOs, watch its init
        through a pidfd, resume health checks."""
        try:
            self._adopt()
        except BaseException:
            self._done()
            raise

    def _adopt(self) -> None:
        write_json(self._path("monitor.pid"), posix.getpid())
        try:
            with open(self._path("exit.json"), "rb") as f:
                self.restarts = int(jsonc.loads(f.read()).get("restartCount", 0))
        except (OSError, ValueError):
            pass
        with open(self._path("pid")) as f:
            self.pid = int(f.read())
        self.run_id += 1
        self.started = time.monotonic()
        self.running = True
        for name in STREAMS:
            try:
                fd = posix.open(self._path(name + ".fifo"), posix.O_RDONLY | posix.O_NONBLOCK | posix.O_CLOEXEC)
            except OSError:
                continue
            self.streams[fd] = name
            self._watch(fd)
        try:
            self.pidfd = posix.pidfd_open(self.pid)
            if not self._ours(self.pid):  # gone, and its pid taken by another process
                posix.close(self.pidfd)
                self.pidfd = None
        except OSError:  # already gone
            pass
        if self.pidfd is None:
            self.loop.call_later(0, lambda: self._init_exited(-1), self)
        else:
            self.loop.add_reader(self.pidfd, self._adopted_exit, self)
        self._health_start()

    def _ours(self, pid: int) -> bool:
        """Whether ``pid`` is in this container's cgroup (when the config names one)."""
        cgroup = self.cfg.get("cgroup")
        if not cgroup:
            return True
        with open(f"/proc/{pid}/cgroup") as f:
            return any(cgroup in line for line in f)

    def _adopted_exit(self) -> None:
        assert self.pidfd is not None
        self.loop.forget(self.pidfd)
        posix.close(self.pidfd)
        self.pidfd = None
        self._init_exited(-1)

    # ------------------------------------------------------------------ running

    def _watch(self, fd: int) -> None:
        self.loop.add_reader(fd, lambda: self._pump(fd), self)

    def _pump(self, fd: int) -> None:
        """Move what a stream holds into the log and to attach clients; forget it at its end."""
        stream = self.streams.get(fd)
        if stream is None:
            return
        try:
            data = posix.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:  # a pty master reads EIO once the last slave closes
            data = b""
        if data:
            self.log.feed(stream, data)
            if self.attach.clients:
                self.attach.broadcast(b"1" if stream == "stdout" else b"2", data)
            return
        self._forget(fd)
        if not self.streams and self.status is not None:
            self._finish_run()

    def _forget(self, fd: int) -> None:
        del self.streams[fd]
        self.loop.forget(fd)
        if fd == self.stdin:
            self.stdin = None
            self.pending_input = b""
        if fd == self.master:
            self.master = None
        posix.close(fd)

    def _close_streams(self) -> None:
        for fd in list(self.streams):
            self._forget(fd)
        self._close_stdin()

    def _client_message(self, msg: bytes) -> None:
        tag, data = msg[:1], msg[1:]
        if tag == b"s":
            self._release()
        elif tag == b"i" and self.stdin is not None:
            self.pending_input += data
            self._feed_stdin()
        elif tag == b"r" and self.master is not None:
            import fcntl

            rows, _, cols = data.decode().partition(" ")
            try:
                size = int(rows).to_bytes(2, "little") + int(cols).to_bytes(2, "little") + bytes(4)
                fcntl.ioctl(self.master, 0x5414, size)  # TIOCSWINSZ
            except (OSError, ValueError, OverflowError):
                pass
        elif tag == b"e" and self.cfg.get("stdin_once") and self.stdin is not None and self.stdin != self.master:
            self.stdin_ended = True
            self._feed_stdin()

    def _client_left(self) -> None:
        if self.held is not None and not self.attach.clients:
            self._release()

    def _feed_stdin(self) -> None:
        """Write what clients typed without blocking: a container that does not read its stdin must
        not stall the others."""
        if self.stdin is None:
            return
        try:
            n = posix.write(self.stdin, self.pending_input) if self.pending_input else 0
        except BlockingIOError:
            n = 0
        except OSError:  # the container closed its stdin
            self._close_stdin()
            return
        self.pending_input = self.pending_input[n:]
        if self.pending_input:
            self.loop.add_writer(self.stdin, self._feed_stdin, self)
            return
        self.loop.remove_writer(self.stdin)
        if self.stdin_ended:
            self._close_stdin()

    def _close_stdin(self) -> None:
        if self.stdin is not None:
            self.loop.remove_writer(self.stdin)
            if self.stdin != self.master:
                posix.close(self.stdin)
        self.stdin = None
        self.pending_input = b""
        self.stdin_ended = False

    # ------------------------------------------------------------------ health checks

    def _health_start(self) -> None:
        h = self.cfg.get("health")
        if not h or not h.get("test"):
            return
        self.health = {"Status": "starting", "FailingStreak": 0, "Log": []}
        write_json(self._path("health.json"), self.health)
        self._health_next()

    def _health_next(self) -> None:
        run = self.run_id
        self.health_timer = self.loop.call_later(float(self.cfg["health"].get("interval", 30)),
                                                 lambda: self._health_check(run), self)

    def _health_check(self, run: int) -> None:
        if run != self.run_id or self.status is not None:
            return
        h = self.cfg["health"]
        begun = timestamp()
        timeout = float(h.get("timeout", 30))
        out_r, out_w = _pipe_from_child()
        try:
            pid = self.loop.spawn([*self.runtime, "exec", self.id, *h["test"]], stdout=out_w, stderr=out_w)
        except BaseException:
            posix.close(out_r)
            raise
        finally:
            posix.close(out_w)
        output = bytearray()
        state = {"timed_out": False}

        def read() -> None:  # drained to the end, kept to the first HEALTH_OUTPUT bytes
            output.extend(_drain(out_r)[:HEALTH_OUTPUT - len(output)])

        def expired() -> None:
            try:
                posix.kill(pid, 9)
            except ProcessLookupError:
                pass
            state["timed_out"] = True

        self.loop.add_reader(out_r, read, self)
        timer = self.loop.call_later(timeout, expired, self)

        def exited(code: int) -> None:
            timer.cancel()
            read()
            self.loop.forget(out_r)
            posix.close(out_r)
            text = output.decode(errors="replace")
            if state["timed_out"]:
                code, text = -1, f"health check exceeded timeout ({timeout:g}s)"
            if run == self.run_id and self.status is None:
                self._health_result(code, text, begun)

        self.loop.watch_child(pid, exited, self)

    def _health_result(self, code: int, output: str, begun: str) -> None:
        h = self.cfg["health"]
        assert self.health is not None
        in_grace = time.monotonic() - self.started < float(h.get("start_period", 0))
        if code == 0:
            self.health["Status"] = "healthy"
            self.health["FailingStreak"] = 0
        elif not in_grace:
            self.health["FailingStreak"] += 1
            if self.health["FailingStreak"] >= int(h.get("retries", 3)):
                self.health["Status"] = "unhealthy"
        self.health["Log"] = [*self.health["Log"][-4:],
                              {"Start": begun, "End": timestamp(), "ExitCode": code, "Output": output}]
        write_json(self._path("health.json"), self.health)
        self._health_next()

    # ------------------------------------------------------------------ exit and restart

    def _init_exited(self, code: int) -> None:
        self.status = code
        if self.health_timer is not None:
            self.health_timer.cancel()
        if self.running:  # else _start or _started sees the status
            self._ending()

    def _ending(self) -> None:
        if not self.streams:
            self._finish_run()
        else:
            # Processes outside the container's pid namespace may keep a pipe open: read what is
            # there for a moment, then stop listening.
            self.grace = self.loop.call_later(GRACE, self._finish_run, self)

    def _finish_run(self) -> None:
        if self.grace is not None:
            self.grace.cancel()
            self.grace = None
        if self.status is None or not self.running:
            return  # not started yet: _start or _started sees the status
        code, self.status = self.status, None
        self.running = False
        for fd in list(self.streams):
            if fd in self.streams:
                self._pump(fd)
        self._close_streams()
        self.log.flush()
        self.run_id += 1

        def checked(status: int) -> None:  # before the runtime's delete removes the cgroup
            oom = status == 1
            self._runtime(["delete", "--force", self.id], lambda *_: self._deleted(code, oom))

        self.loop.fork(self.oom_killed, checked, self, self.note_error)

    def _deleted(self, code: int, oom: bool) -> None:
        info: dict[str, Any] = {"exitCode": code, "finishedAt": timestamp(), "oomKilled": oom,
                                "restartCount": self.restarts}
        if code == -1:
            info["error"] = UNKNOWN
        owner_heard = self._exited(info)
        ev = self.cfg.get("events")
        if ev:  # recorded before anything else is done with the container, as in one process
            self.loop.fork(lambda: self._record_events(ev, code, oom), lambda _: self._decide(code, owner_heard),
                           self, self.note_error)
        else:
            self._decide(code, owner_heard)

    def _decide(self, code: int, owner_heard: bool) -> None:
        """Restart, or be done with the container."""
        if not self.should_restart(code):
            self._done()
            if not owner_heard:
                self._exit_command()
            return
        self.restarts += 1
        self.delay = 0.1 if time.monotonic() - self.started > 10 else min(self.delay * 2, 10.0)
        self.loop.call_later(self.delay, self._restart, self)

    def _restart(self) -> None:
        if _exists(self._path("stopped")) or not _exists(self.dir):  # stopped or removed meanwhile
            self._done()
        else:
            self.start(None)

    def _record_events(self, ev: dict[str, str], code: int, oom: bool) -> int:
        """Record the exit as ``berth events`` shows it (in a forked child: ``berth.events`` and
        what it imports stay out of the supervisor)."""
        from berth import events

        def record(action: str, **attributes: str) -> None:
            events.record(ev["path"], "container", action, self.id, name=ev.get("name", ""),
                          image=ev.get("image", ""), **attributes)

        if oom:
            record("oom")
        record("die", exitCode=str(code))
        return 0

    def oom_killed(self) -> int:
        """1 when the kernel OOM-killed a process of the container, else 0: an exit status, as this
        runs in a forked child (``berth.kernel.cgroups`` is far bigger than the supervisor)."""
        try:
            from berth.kernel.cgroups import open_cgroup

            return int(open_cgroup(self.cfg.get("cgroup") or None, self.id).oom_kill_count() > 0)
        except Exception:
            return 0

    def should_restart(self, code: int) -> bool:
        policy = self.cfg.get("restart") or {}
        name = policy.get("name", "no")
        if _exists(self._path("stopped")):  # the engine stopped it on purpose
            return False
        if name in ("always", "unless-stopped"):
            return True
        if name == "on-failure" and code != 0:
            limit = int(policy.get("max", 0))
            return limit == 0 or self.restarts < limit
        return False

    def _exited(self, info: dict[str, Any]) -> bool:
        """Record an exit; return whether the client that started the container heard of it."""
        write_json(self._path("exit.json"), info)
        return self.attach.finish(int(info["exitCode"]))

    def _exit_command(self) -> None:
        """Run ``exit_command`` (``berth rm`` for ``--rm``) in a session of its own, not waiting:
        it may wait for this container to be done."""
        argv = self.cfg.get("exit_command")
        if argv:
            null = posix.open("/dev/null", posix.O_RDWR | posix.O_CLOEXEC)
            # Its errors stay beside the container's state (which a successful ``rm`` removes).
            err = posix.open(self._path("exit-command.log"),
                             posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC | posix.O_CLOEXEC, 0o600)
            try:
                self.loop.spawn(argv, stdout=null, stderr=err, stdin=null, setsid=True)
            finally:
                posix.close(null)
                posix.close(err)

    def _done(self) -> None:
        """Done for good: without ``monitor.pid`` the engine reads ``exit.json`` as the final word."""
        if self.done:
            return
        self.done = True
        self.run_id += 1  # health checks in flight are ignored
        for timer in (self.held, self.grace, self.health_timer):
            if timer is not None:
                timer.cancel()
        try:
            try:
                posix.unlink(self._path("monitor.pid"))
            except FileNotFoundError:
                pass
            self._close_streams()
            if self.pidfd is not None:
                self.loop.forget(self.pidfd)
                posix.close(self.pidfd)
                self.pidfd = None
            self.attach.close()
            self.log.close()
        finally:
            self.on_done(self)
