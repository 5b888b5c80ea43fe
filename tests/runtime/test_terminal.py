"""Terminals: process.terminal with --console-socket (the pty master over SCM_RIGHTS), and exec -t."""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import termios
from pathlib import Path
from typing import Any

import pytest
from rt_helpers import RT, ConsoleServer, new_id, read_master, write_json

pytestmark = [pytest.mark.root, pytest.mark.integration]


def test_create_with_terminal(rt: RT, make_bundle: Any, cid: str, console_server: ConsoleServer) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["consoleSize"] = {"height": 33, "width": 111}

    script = "tty; stty size; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-ttys; ls -l /dev/console; read line;" \
             "echo got:$line"
    bundle = make_bundle(["sh", "-c", script], edit=edit, terminal=True)
    rt("create", "--console-socket", str(console_server.path), "--bundle", str(bundle), cid)
    master = console_server.receive()
    try:
        assert rt.status(cid) == "created"
        rt("start", cid)
        out = read_master(master, until="all-ttys")
        os.write(master, b"typed\n")
        out += read_master(master, until="got:typed")
        lines = [line.strip() for line in out.splitlines()]
        assert lines[0] == "/dev/console" or lines[0].startswith("/dev/pts/"), lines
        assert lines[1] == "33 111"
        assert "all-ttys" in lines
        assert any(line.startswith("crw") and "136," in line for line in lines), lines
        assert "got:typed" in lines
        rt.wait_status(cid, "stopped")
    finally:
        os.close(master)


def test_terminal_needs_console_socket(rt: RT, make_bundle: Any, cid: str) -> None:
    res = rt("create", "--bundle", str(make_bundle(["true"], terminal=True)), cid, check=False)
    assert res.returncode != 0 and "console-socket" in res.stderr
    assert rt.status(cid) == "gone"


def test_terminal_bad_console_socket(rt: RT, make_bundle: Any, cid: str, tmp_path: Path) -> None:
    res = rt("create", "--console-socket", str(tmp_path / "nope.sock"),
             "--bundle", str(make_bundle(["true"], terminal=True)), cid, check=False)
    assert res.returncode != 0 and "nope.sock" in res.stderr
    assert rt.status(cid) == "gone"


def test_terminal_non_root_user_owns_its_tty(rt: RT, make_bundle: Any, cid: str,
                                             console_server: ConsoleServer) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["user"] = {"uid": 1000, "gid": 1000}

    bundle = make_bundle(["sh", "-c", "stat -c %u /dev/console; id -u"], edit=edit, terminal=True)
    rt("run", "-d", "--console-socket", str(console_server.path), "--bundle", str(bundle), cid)
    master = console_server.receive()
    try:
        out = read_master(master)
        assert out.split() == ["1000", "1000"]
    finally:
        os.close(master)


def test_run_with_terminal_foreground(rt: RT, make_bundle: Any, console_server: ConsoleServer) -> None:
    bundle = make_bundle(["sh", "-c", "echo in-tty; exit 4"], terminal=True)
    proc = rt.popen("run", "--console-socket", str(console_server.path), "--bundle", str(bundle), new_id(),
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    master = console_server.receive()
    try:
        assert "in-tty" in read_master(master, until="in-tty")
        assert proc.wait(timeout=10) == 4
    finally:
        os.close(master)
        proc.kill()
        proc.wait()


def test_exec_tty(rt: RT, make_bundle: Any, cid: str, console_server: ConsoleServer) -> None:
    rt("run", "-d", "--bundle", str(make_bundle(["sleep", "1000"])), cid)
    proc = rt.popen("exec", "-t", "--console-socket", str(console_server.path), cid,
                    "sh", "-c", "tty; [ -t 0 ] && echo is-a-tty; exit 5",
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    master = console_server.receive()
    try:
        out = read_master(master, until="is-a-tty")
        lines = [line.strip() for line in out.splitlines()]
        assert lines[0].startswith("/dev/pts/"), lines
        assert "is-a-tty" in lines
        assert proc.wait(timeout=10) == 5
    finally:
        os.close(master)
        proc.kill()
        proc.wait()


def test_exec_tty_detached_with_process_file(rt: RT, make_bundle: Any, cid: str, tmp_path: Path,
                                             console_server: ConsoleServer) -> None:
    rt("run", "-d", "--bundle", str(make_bundle(["sleep", "1000"])), cid)
    process = {"terminal": True, "args": ["sh", "-c", "read x; echo echo:$x"], "cwd": "/",
               "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"], "consoleSize": {"height": 10, "width": 20}}
    rt("exec", "-d", "--console-socket", str(console_server.path), "--process",
       str(write_json(tmp_path / "p.json", process)), cid)
    master = console_server.receive()
    try:
        rows, cols = struct.unpack("HHHH", fcntl.ioctl(master, termios.TIOCGWINSZ, b"\0" * 8))[:2]
        assert (rows, cols) == (10, 20)
        os.write(master, b"hi\n")
        assert "echo:hi" in read_master(master, until="echo:hi")
    finally:
        os.close(master)


def test_exec_tty_without_socket_fails(rt: RT, make_bundle: Any, cid: str) -> None:
    rt("run", "-d", "--bundle", str(make_bundle(["sleep", "1000"])), cid)
    res = rt("exec", "-t", cid, "true", check=False)
    assert res.returncode != 0 and "console-socket" in res.stderr


def test_umoci_config_with_terminal(rt: RT, umoci_bundle: Path, console_server: ConsoleServer) -> None:
    """umoci's own config.json, unchanged: a terminal running /bin/sh."""
    spec = json.loads((umoci_bundle / "config.json").read_text())
    assert spec["process"]["terminal"] is True
    cid = new_id()
    rt("run", "-d", "--console-socket", str(console_server.path), "--bundle", str(umoci_bundle), cid)
    master = console_server.receive()
    try:
        os.write(master, b"echo umoci-$((40+2)); exit 0\n")
        assert "umoci-42" in read_master(master, until="umoci-42")
        rt.wait_status(cid, "stopped")
    finally:
        os.close(master)


def test_run_relays_the_callers_terminal_size(rt: RT, make_bundle: Any) -> None:
    """`run` of a terminal bundle without --console-socket relays the caller's own terminal: the
    container's pty takes its rows and columns (rows first in struct winsize)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    bundle = make_bundle(["sh", "-c", "stty size"], terminal=True)
    proc = subprocess.Popen(rt.argv("run", "--bundle", str(bundle), new_id()), stdin=slave, stdout=slave,
                            stderr=slave, start_new_session=True)
    os.close(slave)
    try:
        out = read_master(master, until="33 111")
        assert "33 111" in out, out
        assert proc.wait(timeout=10) == 0
    finally:
        os.close(master)
        proc.kill()
        proc.wait()
