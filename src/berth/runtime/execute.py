"""``exec``: run another process inside a running container.

The runtime joins the container's pid namespace itself (that only affects its children), forks, and
the child joins the remaining namespaces from ``/proc/<init>/ns/*`` — user first, mount last — and
the cgroup, then takes on the process's identity the same way the init does and execs through the
trampoline. The parent waits for it (or, with ``detach``, leaves it to the caller).
"""

from __future__ import annotations

import os

from berth.errors import Conflict
from berth.kernel import syscalls as sc
from berth.oci import runtime_config
from berth.runtime import console
from berth.runtime import process as proc
from berth.runtime.state import StateDir
from berth.runtime.sync import Channel, pair

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_ORDER = ("user", "ipc", "uts", "network", "cgroup", "time", "mount")


def exec_process(root: str, cid: str, process: dict[str, Any], *, detach: bool = False,
                 pid_file: str | None = None, console_socket: str | None = None,
                 preserve_fds: int = 0) -> int:
    """Start ``process`` in the container; return its exit status, or 0 once started with ``detach``."""
    runtime_config.validate_process(process, "process")
    sd = StateDir(root, cid)
    record = sd.load()
    status = sd.status(record)
    if record is None or status not in ("created", "running"):
        raise Conflict(f"cannot exec in container {cid}: it is {status}")
    if process.get("terminal") and not console_socket:
        from berth.errors import InvalidArgument

        raise InvalidArgument("exec -t needs --console-socket")
    spec_ns = runtime_config.namespaces(record.config)
    fds = []
    for kind in _ORDER:
        if kind in spec_ns:
            name = sc.NAMESPACES[kind][1]
            fds.append((os.open(f"/proc/{record.pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC),
                        sc.NAMESPACES[kind][0]))
    console_fd = None
    if console_socket:
        console_fd = console.connect(console_socket)
    own_pidns = None
    if "pid" in spec_ns:
        own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(f"/proc/{record.pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        sc.setns(target, sc.CLONE_NEWPID)
        os.close(target)
    cgroup = record.cgroup()
    parent, child = pair()
    # The child is born inside the container's pid namespace: non-dumpable from its first instant,
    # so no container process can open /proc/PID/exe (the host's Python) or its descriptors.
    proc.set_dumpable(False)
    pid = os.fork()
    if pid:
        proc.set_dumpable(True)
    if pid and own_pidns is not None:
        sc.setns(own_pidns, sc.CLONE_NEWPID)
        os.close(own_pidns)
    if pid == 0:
        parent.close()
        _child(record.config, process, fds, child, console_fd, preserve_fds, cgroup, root)
    child.close()
    for fd, _ in fds:
        os.close(fd)
    if console_fd is not None:
        os.close(console_fd)
    try:
        if not detach:
            proc.forward_signals(pid)
        from berth.runtime.state import oci_state

        # For a seccomp agent (linux.seccomp.listenerPath): the state, with this process's pid.
        parent.send("G", {**oci_state(record, cid, "running"), "pid": pid})
        parent.expect("R")
    except BaseException:
        from berth.runtime.lifecycle import _kill_and_wait

        _kill_and_wait(pid)
        raise
    finally:
        parent.close()
    if pid_file:
        from berth.runtime.lifecycle import _write_pid_file

        _write_pid_file(pid_file, pid)
    if detach:
        return 0
    from berth.runtime.lifecycle import wait_exit

    return wait_exit(pid)  # the signals a user sends the runtime pass on: forward_signals above


def _child(spec: dict[str, Any], process: dict[str, Any], fds: list[tuple[int, int]], chan: Channel,
           console_fd: int | None, preserve_fds: int, cgroup: Any, state_root: str) -> None:
    try:
        proc.reset_signals()
        proc.set_dumpable(False)
        keep = {chan.read_fd, chan.write_fd, *(fd for fd, _ in fds)}
        if console_fd is not None:
            keep.add(console_fd)
        proc.close_fds(preserve_fds, keep)
        seccomp = proc.preload(spec, state_root)
        cgroup.enter()
        state = chan.expect("G")
        for fd, flag in fds:
            sc.setns(fd, flag)
        os.chdir("/")
        linux = spec.get("linux", {})
        if process.get("terminal"):
            _exec_console(process, console_fd)
        proc.apply_limits(process, {})
        from berth.runtime import trampoline

        tramp_fd = trampoline.sealed_fd()
        proc.set_personality(linux)
        nnp = bool(process.get("noNewPrivileges"))
        if nnp:
            sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        else:
            proc.install_seccomp(seccomp, state)
        proc.switch_identity(process)
        env = proc.environment(process)
        proc.enter_cwd(process["cwd"])
        path = proc.resolve_executable(process["args"], env)
        if nnp:
            proc.install_seccomp(seccomp, state)
        chan.send("R")
        chan.close()
        trampoline.execve(tramp_fd, path, process["args"], env)
    except BaseException as e:
        chan.send_error(e)
        os._exit(1)


def _exec_console(process: dict[str, Any], console_fd: int | None) -> None:
    """A new pty from the container's devpts (we are in its mount namespace), master sent out."""
    master = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    slave = console.open_pty(master, process)
    assert console_fd is not None
    console.send_master(console_fd, master, "/dev/pts/ptmx")
    os.setsid()
    console.take_terminal(slave)
