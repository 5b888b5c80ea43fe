"""``linux.seccomp.listenerPath``: a seccomp agent receives the container process state and the
notify fd, and answers the container's notified syscalls itself.

The agent here is the test: it listens on a unix socket, takes the state (JSON) and the fd
(SCM_RIGHTS) from ``berth-runtime run``, then reads each notification with
SECCOMP_IOCTL_NOTIF_RECV and answers with SECCOMP_IOCTL_NOTIF_SEND. The container's mkdir(2)
calls get the agent's answers: first EACCES, then success without any directory made.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import select
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.root, pytest.mark.integration]

SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100  # _IOWR('!', 0, struct seccomp_notif): 80 bytes
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101  # _IOWR('!', 1, struct seccomp_notif_resp): 24 bytes
NOTIF = struct.Struct("<QII" + "iIQ6Q")  # id, pid, flags, seccomp_data {nr, arch, ip, args[6]}
RESP = struct.Struct("<QqiI")  # id, val, error, flags
MKDIR_NRS = {83, 258}  # x86_64 mkdir, mkdirat
METADATA = "agent-metadata;MKNOD=/dev/null"


class Agent(threading.Thread):
    """A seccomp agent that answers each mkdir with the next of ``answers`` ((val, error) pairs)."""

    def __init__(self, path: Path, answers: list[tuple[int, int]]) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(1)
        self.sock.settimeout(20)
        self.answers = answers
        self.message: dict[str, Any] = {}
        self.fds: list[int] = []
        self.seen: list[tuple[int, int, str]] = []  # (nr, pid, path) of each notification
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(20)
                data, self.fds, _flags, _addr = socket.recv_fds(conn, 65536, 4)
                while chunk := conn.recv(65536):  # one state per connection, then the runtime closes
                    data += chunk
            self.message = json.loads(data)
            assert len(self.fds) == 1, self.fds
            for val, error in self.answers:
                self.answer(self.fds[0], val, error)
        except BaseException as e:  # reported by the test
            self.error = e

    def answer(self, fd: int, val: int, error: int) -> None:
        ready, _, _ = select.select([fd], [], [], 20)
        assert ready, "no notification within 20s"
        buf = bytearray(NOTIF.size)
        fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, buf)
        fields = NOTIF.unpack(buf)
        notif_id, pid, nr, args = fields[0], fields[1], fields[3], fields[6:]
        path_arg = args[0] if nr == 83 else args[1]
        self.seen.append((nr, pid, read_string(pid, path_arg)))
        fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, bytearray(RESP.pack(notif_id, val, error, 0)))

    def close(self) -> None:
        self.sock.close()
        for fd in self.fds:
            os.close(fd)


def read_string(pid: int, address: int) -> str:
    """A NUL-terminated string from the notifying process's memory (what a real agent checks)."""
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(address)
        return mem.read(256).split(b"\0", 1)[0].decode(errors="replace")


def notify_config(spec: dict[str, Any], listener: Path, nnp: bool) -> None:
    spec["process"]["noNewPrivileges"] = nnp
    spec["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": str(listener),
        "listenerMetadata": METADATA,
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}],
    }


SCRIPT = ("mkdir /tmp/a; echo first=$?; mkdir /tmp/b; echo second=$?; "
          "test -d /tmp/b && echo made || echo not-made; ls -l /proc/$$/fd/")


@pytest.fixture
def agent_socket(tmp_path: Path) -> Path:
    if platform.machine() != "x86_64":
        pytest.skip("the syscall numbers here are x86_64's")
    from berth.kernel import seccomp

    if seccomp._lib().api < 5:
        pytest.skip("libseccomp or the kernel lacks SCMP_ACT_NOTIFY")
    return tmp_path / "agent.sock"


@pytest.mark.parametrize("nnp", [False, True], ids=["caps", "no-new-privs"])
def test_agent_gets_state_and_fd_and_answers_the_container(rt: Any, make_bundle: Any, cid: str,
                                                         agent_socket: Path, nnp: bool) -> None:
    agent = Agent(agent_socket, [(0, -errno.EACCES), (0, 0)])
    agent.start()
    try:
        bundle = make_bundle(["sh", "-c", SCRIPT], edit=lambda spec: notify_config(spec, agent_socket, nnp))
        res = rt.run(bundle, cid=cid)
        agent.join(20)
        assert agent.error is None, repr(agent.error)
        assert res.returncode == 0, res.stderr
        # The container saw the agent's answers, not the kernel's.
        assert "first=1" in res.stdout and "Permission denied" in res.stdout + res.stderr, res.stdout
        assert "second=0" in res.stdout and "not-made" in res.stdout, res.stdout
        # Neither the notify fd nor the agent's connection reached the container.
        fd_lines = [line for line in res.stdout.splitlines() if "->" in line]
        assert fd_lines and not any("seccomp" in line or "socket:" in line for line in fd_lines), fd_lines
        assert [(nr in MKDIR_NRS, path) for nr, _pid, path in agent.seen] == [(True, "/tmp/a"), (True, "/tmp/b")]

        msg = agent.message
        assert set(msg) == {"ociVersion", "fds", "pid", "metadata", "state"}
        assert msg["fds"] == ["seccompFd"]
        assert msg["metadata"] == METADATA
        state = msg["state"]
        assert state["id"] == cid
        assert state["bundle"] == str(bundle)
        assert state["status"] == ("running" if nnp else "creating")
        assert msg["pid"] == state["pid"] > 1  # the init's pid as the runtime sees it (the host's)
    finally:
        agent.close()


def test_no_agent_listening_fails_create(rt: Any, make_bundle: Any, cid: str, agent_socket: Path) -> None:
    """The spec: if sending to the socket fails, the runtime must generate an error."""
    bundle = make_bundle(["true"], edit=lambda spec: notify_config(spec, agent_socket, False))
    res = rt("create", "--bundle", str(bundle), cid, check=False)
    assert res.returncode != 0
    assert f"linux.seccomp.listenerPath {agent_socket}" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_exec_hands_its_own_fd_to_the_agent(rt: Any, make_bundle: Any, cid: str, agent_socket: Path) -> None:
    """A process exec'd into the container gets the filter too; its notify fd goes to the agent
    with the container's state and the exec'd process's pid."""
    first = Agent(agent_socket, [])  # the init's fd: nothing to answer, the init only sleeps
    first.start()
    bundle = make_bundle(["sleep", "30"], edit=lambda spec: notify_config(spec, agent_socket, False))
    try:
        rt("create", "--bundle", str(bundle), cid)
        rt("start", cid)
        first.join(20)
        assert first.error is None, repr(first.error)
        init_pid = first.message["pid"]
    finally:
        first.close()
    agent_socket.unlink()
    second = Agent(agent_socket, [(0, -errno.EPERM)])
    second.start()
    try:
        res = rt("exec", cid, "sh", "-c", "mkdir /tmp/c; echo r=$?", check=False)
        second.join(20)
        assert second.error is None, repr(second.error)
        assert res.returncode == 0 and "r=1" in res.stdout, (res.stdout, res.stderr)
        assert [path for _nr, _pid, path in second.seen] == ["/tmp/c"]
        msg = second.message
        assert msg["state"]["id"] == cid and msg["state"]["status"] == "running"
        assert msg["pid"] not in (init_pid, 0) and msg["pid"] == msg["state"]["pid"]
    finally:
        second.close()
        rt("delete", "--force", cid, check=False)
