"""``berth-monitor STATE_DIR``: supervise one container described by ``STATE_DIR/monitor.json``.

The engine writes ``monitor.json``, spawns the monitor in a session of its own and reads one line
from the descriptor named by ``BERTH_SYNC_FD``: ``started <pid>`` or ``error <text>``. From then
on the monitor owns the container's life; what it learns lands in files of ``STATE_DIR``, written
atomically, which the engine reads:

- ``exit.json`` — ``{"exitCode", "finishedAt", "oomKilled", "restartCount"}`` after each exit;
- ``health.json`` — health status and the last results, when a health check is configured;
- ``monitor.pid`` — this process, so the engine can tell a live monitor from a dead one.

``monitor.json`` fields: ``id``, ``bundle``, ``runtime`` (argv prefix of an OCI runtime with runc's
command line), ``log_path``, ``log_max_size``, ``log_max_files``, ``terminal``, ``restart``
(``{"name": "no|on-failure|always|unless-stopped", "max": N}``), ``health`` (``{"test": argv,
"interval", "timeout", "retries", "start_period"}`` in seconds) and ``cgroup`` (the container's
``linux.cgroupsPath``, to read OOM kills before the runtime deletes the cgroup).
"""

from __future__ import annotations

import _signal
import os
import select
import sys
import time

from berth.monitor.logfile import LogWriter, timestamp
from berth.oci import jsonc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PR_SET_CHILD_SUBREAPER = 36


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(jsonc.dumps(obj))
    os.replace(tmp, path)


def _spawn(argv: list[str], stdout: int, stderr: int) -> int:
    return os.posix_spawn(argv[0], argv, os.environ, file_actions=[
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, stdout, 1),
        (os.POSIX_SPAWN_DUP2, stderr, 2),
    ])


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


class Monitor:
    def __init__(self, state_dir: str) -> None:
        self.dir = state_dir
        with open(os.path.join(state_dir, "monitor.json"), "rb") as f:
            self.cfg: dict[str, Any] = jsonc.loads(f.read())
        self.id: str = self.cfg["id"]
        self.runtime: list[str] = list(self.cfg["runtime"])
        self.log = LogWriter(self.cfg["log_path"], self.cfg.get("log_max_size", 10 * 1024 * 1024),
                             self.cfg.get("log_max_files", 3))
        self.restarts = 0
        self.health: dict[str, Any] | None = None

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _runtime(self, *args: str) -> tuple[int, str]:
        """Run one runtime command; return its status and the last line of its error output."""
        err_r, err_w = os.pipe()
        null = os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)
        pid = _spawn([*self.runtime, *args], null, err_w)
        os.close(err_w)
        os.close(null)
        err = b""
        while chunk := os.read(err_r, 65536):
            err += chunk
        os.close(err_r)
        lines = err.decode(errors="replace").strip().splitlines()
        return _wait(pid), (lines[-1] if lines else "")

    def start_container(self) -> int:
        """create + start with the container's stdio on our pipes (or a pty); return the init pid."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pid_file = self._path("pid")
        args = [*self.runtime, "create", "--bundle", self.cfg["bundle"], "--pid-file", pid_file]
        console = None
        if self.cfg.get("terminal"):
            from berth.runtime.console import Receiver

            console = Receiver()
            args += ["--console-socket", console.path]
        creator = _spawn([*args, self.id], out_w, err_w)
        os.close(out_w)
        os.close(err_w)
        self.streams = {out_r: "stdout", err_r: "stderr"}
        if console is not None:
            # The runtime sends the pty master before create returns; stdio pipes stay for its errors.
            master = console.master()
            self.streams[master] = "stdout"
        status = _wait(creator)
        if status != 0:
            message = self._drain_text(out_r, err_r) or f"runtime create exited with status {status}"
            raise RuntimeError(message)
        with open(pid_file) as f:
            pid = int(f.read())
        status, message = self._runtime("start", self.id)
        if status != 0:
            self._runtime("delete", "--force", self.id)
            raise RuntimeError(message or f"runtime start exited with status {status}")
        return pid

    def _drain_text(self, *fds: int) -> str:
        text = b""
        for fd in fds:
            while chunk := os.read(fd, 65536):
                text += chunk
            os.close(fd)
        lines = text.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""

    def supervise(self, pid: int) -> int:
        """Relay output to the log until the init exits and its output ends; return its status."""
        status: int | None = None
        next_health = self._health_start()
        while self.streams or status is None:
            timeout = 0.5
            if next_health is not None:
                timeout = max(0.0, min(timeout, next_health - time.monotonic()))
            if self.streams:
                ready = select.select(list(self.streams), [], [], timeout)[0]
            else:
                time.sleep(timeout)
                ready = []
            self._pump(ready)
            if status is None:
                status = self._reap(pid)
                if status is not None and self.streams:
                    self._close_after_grace()
            if next_health is not None and status is None and time.monotonic() >= next_health:
                next_health = self._health_check()
        self.log.flush()
        return status if status is not None else 0

    def _pump(self, ready: list[int]) -> None:
        """Move what the ready streams hold into the log; forget a stream at its end."""
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # a pty master reads EIO once the last slave closes
                data = b""
            if data:
                self.log.feed(self.streams[fd], data)
            else:
                os.close(fd)
                del self.streams[fd]

    def _close_after_grace(self) -> None:
        """Processes outside the container's pid namespace may keep a pipe open; read what is
        there for a moment, then stop listening."""
        deadline = time.monotonic() + 0.5
        while self.streams and time.monotonic() < deadline:
            self._pump(select.select(list(self.streams), [], [], max(0.0, deadline - time.monotonic()))[0])
        for fd in list(self.streams):
            os.close(fd)
        self.streams.clear()

    def _reap(self, pid: int) -> int | None:
        """Reap every exited child (we are a subreaper); return the init's status if it exited."""
        result = None
        while True:
            try:
                got, raw = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return result
            if got == 0:
                return result
            if got == pid:
                result = os.waitstatus_to_exitcode(raw)
                if result < 0:
                    result = 128 - result

    # ------------------------------------------------------------------ health checks

    def _health_start(self) -> float | None:
        h = self.cfg.get("health")
        if not h or not h.get("test"):
            return None
        self.health = {"Status": "starting", "FailingStreak": 0, "Log": []}
        _write_json(self._path("health.json"), self.health)
        self._started = time.monotonic()
        return time.monotonic() + float(h.get("interval", 30))

    def _health_check(self) -> float:
        h = self.cfg["health"]
        assert self.health is not None
        start = timestamp()
        code, output = self._exec_with_timeout(list(h["test"]), float(h.get("timeout", 30)))
        in_grace = time.monotonic() - self._started < float(h.get("start_period", 0))
        if code == 0:
            self.health["Status"] = "healthy"
            self.health["FailingStreak"] = 0
        elif not in_grace:
            self.health["FailingStreak"] += 1
            if self.health["FailingStreak"] >= int(h.get("retries", 3)):
                self.health["Status"] = "unhealthy"
        self.health["Log"] = [*self.health["Log"][-4:],
                              {"Start": start, "End": timestamp(), "ExitCode": code, "Output": output}]
        _write_json(self._path("health.json"), self.health)
        return time.monotonic() + float(h.get("interval", 30))

    def _exec_with_timeout(self, test: list[str], timeout: float) -> tuple[int, str]:
        out_r, out_w = os.pipe()
        pid = _spawn([*self.runtime, "exec", self.id, *test], out_w, out_w)
        os.close(out_w)
        deadline = time.monotonic() + timeout
        output = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, 9)
                os.close(out_r)
                os.waitpid(pid, 0)
                return -1, f"health check exceeded timeout ({timeout:g}s)"
            if select.select([out_r], [], [], left)[0]:
                chunk = os.read(out_r, 4096)
                if not chunk:
                    break
                output += chunk[: 4096 - len(output)]
        os.close(out_r)
        return _wait(pid), output.decode(errors="replace")

    # ------------------------------------------------------------------ exit and restart

    def _event(self, action: str, **attributes: str) -> None:
        ev = self.cfg.get("events")
        if ev:
            from berth import events

            events.record(ev["path"], "container", action, self.id, name=ev.get("name", ""),
                          image=ev.get("image", ""), **attributes)

    def oom_killed(self) -> bool:
        try:
            from berth.kernel.cgroups import open_cgroup

            return open_cgroup(self.cfg.get("cgroup") or None, self.id).oom_kill_count() > 0
        except Exception:
            return False

    def should_restart(self, code: int) -> bool:
        policy = self.cfg.get("restart") or {}
        name = policy.get("name", "no")
        if os.path.exists(self._path("stopped")):  # the engine stopped it on purpose
            return False
        if name in ("always", "unless-stopped"):
            return True
        if name == "on-failure" and code != 0:
            limit = int(policy.get("max", 0))
            return limit == 0 or self.restarts < limit
        return False

    def run(self, sync_fd: int | None) -> int:
        _write_json(self._path("monitor.pid"), os.getpid())
        delay = 0.1
        while True:
            try:
                pid = self.start_container()
            except Exception as e:
                if sync_fd is not None:
                    os.write(sync_fd, f"error {e}\n".encode())
                    os.close(sync_fd)
                    return 1
                code, oom = 127, False  # a restart that could not start: record it and stop
                _write_json(self._path("exit.json"), {"exitCode": code, "finishedAt": timestamp(),
                                                      "oomKilled": oom, "restartCount": self.restarts,
                                                      "error": str(e)})
                return 1
            if sync_fd is not None:
                os.write(sync_fd, f"started {pid}\n".encode())
                os.close(sync_fd)
                sync_fd = None
            started = time.monotonic()
            code = self.supervise(pid)
            oom = self.oom_killed()
            self._runtime("delete", "--force", self.id)
            _write_json(self._path("exit.json"), {"exitCode": code, "finishedAt": timestamp(),
                                                  "oomKilled": oom, "restartCount": self.restarts})
            if oom:
                self._event("oom")
            self._event("die", exitCode=str(code))
            if not self.should_restart(code):
                self.log.close()
                return 0
            self.restarts += 1
            delay = 0.1 if time.monotonic() - started > 10 else min(delay * 2, 10.0)
            time.sleep(delay)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: berth-monitor STATE_DIR\n")
        return 2
    from berth.kernel.syscalls import prctl

    prctl(PR_SET_CHILD_SUBREAPER, 1)
    _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)
    sync = os.environ.pop("BERTH_SYNC_FD", None)
    return Monitor(args[0]).run(int(sync) if sync else None)
