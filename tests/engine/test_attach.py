"""attach, detach keys and stdin through the monitor's attach socket: ``run -it``, ``run -i``,
``start -a``/``-ai`` and ``attach`` end to end with real containers, under a real pseudo-terminal
where a terminal is what is being tested."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from berth.engine.engine import Engine
from berth.errors import InvalidArgument
from berth.monitor.attach import parse_detach_keys

IMAGE = "localhost/busybox:latest"
BERTH = str(Path(sys.executable).parent / "berth")
pytestmark = [pytest.mark.root, pytest.mark.integration]


class Terminal:
    """``berth ARGS`` on a fresh pty of 24x80, driven like a user at a keyboard."""

    def __init__(self, engine_dirs: tuple[str, str], *args: str) -> None:
        root, runroot = engine_dirs
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # pragma: no cover - the child
            os.execv(BERTH, [BERTH, "--root", root, "--runroot", runroot, *args])
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.output = b""

    def expect(self, text: bytes, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} not seen in {self.output!r}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    self.output += os.read(self.fd, 4096)
                except OSError:
                    break
        assert text in self.output, self.output

    def type(self, data: bytes) -> None:
        os.write(self.fd, data)

    def exit_code(self, timeout: float = 15) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.05)[0]:
                try:
                    self.output += os.read(self.fd, 4096)
                except OSError:
                    pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"berth did not exit: {self.output!r}")


def test_detach_keys_parse() -> None:
    assert parse_detach_keys(None) == b"\x10\x11"
    assert parse_detach_keys("") == b"\x10\x11"  # Docker: empty is the default
    assert parse_detach_keys("ctrl-a,x,ctrl-@,ctrl-[") == b"\x01x\x00\x1b"
    for bad in ("ctrl-", "ctrl-1", "alt-x", "ab"):
        with pytest.raises(InvalidArgument):
            parse_detach_keys(bad)


def test_run_it_detach_then_attach(engine: Engine, engine_dirs: tuple[str, str], berth: Any) -> None:
    term = Terminal(engine_dirs, "run", "-it", "--name", "shell", IMAGE, "sh")
    term.expect(b"/ # ")  # the prompt: the shell reads the terminal now
    term.type(b"echo $((6*7)); stty size; tty\r")
    term.expect(b"42\r\n24 80\r\n/dev/pts/0")
    term.type(b"\x10\x11")  # ctrl-p ctrl-q
    assert term.exit_code() == 0
    assert engine.get("shell").status == "running"

    # attach again: a keystroke that starts the sequence but does not finish it is passed on
    term = Terminal(engine_dirs, "attach", "--detach-keys", "ctrl-a,d", "shell")
    term.type(b"echo again\r")
    term.expect(b"again\r\n")
    term.type(b"\x01echo x\r")  # ctrl-a then not d: the shell sees both (ctrl-a moves to line start)
    term.expect(b"x\r\n")
    term.type(b"\x01d")
    assert term.exit_code() == 0
    assert engine.get("shell").status == "running"

    term = Terminal(engine_dirs, "attach", "shell")
    term.type(b"exit 5\r")
    assert term.exit_code() == 5
    assert engine.wait("shell", 10) == 5
    assert berth("attach", "shell").returncode == 125  # not running: one line, Docker's code
    assert berth("attach", "--detach-keys", "alt-q", "shell").returncode == 125


def test_run_it_rm_removes_after_exit_and_after_detach(engine: Engine, engine_dirs: tuple[str, str]) -> None:
    term = Terminal(engine_dirs, "run", "-it", "--rm", "--name", "brief", IMAGE, "sh", "-c", "read x; exit 3")
    term.type(b"go\r")
    assert term.exit_code() == 3
    assert [c.name for c in engine.containers()] == []  # gone when run returns, as with Docker

    term = Terminal(engine_dirs, "run", "-it", "--rm", "--name", "later", IMAGE, "sh")
    term.expect(b"/ # ")
    term.type(b"echo up\r")
    term.expect(b"up\r\n")
    term.type(b"\x10\x11")
    assert term.exit_code() == 0
    assert engine.get("later").status == "running"
    engine.kill("later", "KILL")
    deadline = time.monotonic() + 10
    while any(c.name == "later" for c in engine.containers()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [c.name for c in engine.containers()] == []  # the monitor removed it once it exited


def test_run_i_pipes_stdin_and_keeps_streams_apart(berth: Any) -> None:
    r = berth("run", "-i", "--rm", IMAGE, "sh", "-c", "tr a-z A-Z; echo err >&2; exit 4",
              input="hello\nworld\n")
    assert (r.returncode, r.stdout, r.stderr) == (4, "HELLO\nWORLD\n", "err\n")
    big = "x" * 300_000 + "\n"  # more than a pipe holds: the monitor must not block on it
    r = berth("run", "-i", "--rm", IMAGE, "wc", "-c", input=big)
    assert r.stdout.strip() == str(len(big))
    assert berth("ps", "-a", "-q").stdout == ""
    cid = berth("run", "-d", "--rm", IMAGE, "sleep", "0.2").stdout.strip()
    deadline = time.monotonic() + 10
    while berth("ps", "-a", "-q").stdout and time.monotonic() < deadline:
        time.sleep(0.1)
    assert berth("ps", "-a", "-q").stdout == "", cid  # run -d --rm: the monitor removed it


def test_start_attach_sees_all_output(engine: Engine, berth: Any) -> None:
    c = engine.create(IMAGE, ["sh", "-c", "echo first; echo second >&2; exit 7"], pull="never", name="once")
    r = berth("start", "-a", "once")
    assert (r.returncode, r.stdout, r.stderr) == (7, "first\n", "second\n")
    engine.create(IMAGE, ["cat"], pull="never", name="cat", interactive=True)
    r = berth("start", "-ai", "cat", input="typed\n")
    assert (r.returncode, r.stdout) == (0, "typed\n")
    assert engine.get(c.id).exit_code == 7
    engine.create(IMAGE, ["sh", "-c", "exit 1"], pull="never", name="tidy", auto_remove=True)
    assert berth("start", "-a", "tidy").returncode == 1
    assert "tidy" not in [c.name for c in engine.containers()]  # create --rm, start -a: removed on exit


def test_attach_without_terminal_proxies_signals(engine: Engine, engine_dirs: tuple[str, str]) -> None:
    engine.run(IMAGE, ["sh", "-c", "trap 'echo got-term; exit 9' TERM; echo ready; while :; do sleep 0.1; done"],
               pull="never", name="trapper")
    time.sleep(0.5)
    root, runroot = engine_dirs
    proc = subprocess.Popen([BERTH, "--root", root, "--runroot", runroot, "attach", "--no-stdin", "trapper"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=15)
    assert (proc.returncode, out) == (9, "got-term\n"), err

    engine.run(IMAGE, ["sh", "-c", "trap 'echo no; exit 9' TERM; while :; do sleep 0.1; done"], pull="never",
               name="unproxied")
    time.sleep(0.5)
    proc = subprocess.Popen([BERTH, "--root", root, "--runroot", runroot, "attach", "--sig-proxy=false",
                             "unproxied"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=15)
    assert proc.returncode == -signal.SIGTERM
    assert engine.get("unproxied").status == "running"


def test_library_attach(engine: Engine) -> None:
    """The Engine API: start(attach=True) holds the container until attach(start=True) releases it."""
    c = engine.run(IMAGE, ["sh", "-c", "echo from-library; exit 2"], pull="never", attach=True)
    r, w = os.pipe()
    saved = os.dup(1)
    os.dup2(w, 1)
    try:
        code = engine.attach(c.id, stdin=False, start=True)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(w)
    with os.fdopen(r) as f:
        assert f.read() == "from-library\n"
    assert code == 2
