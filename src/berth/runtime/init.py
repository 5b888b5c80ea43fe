"""The container's side of ``create``: from a forked runtime child to the user's process.

The parent (``lifecycle.create``) forks, places the child in its cgroup and then lets it go. The
child enters or creates its namespaces, builds the root filesystem, lets the parent run the
prestart/createRuntime hooks, pivots into the rootfs, takes on the container's identity and
reports "ready". It then blocks opening the exec fifo until ``start`` reads it, and execs the
command (through the trampoline, see ``trampoline``). Nothing here returns: every path ends in exec
or ``os._exit``.
"""

from __future__ import annotations

import errno
import os

from berth.kernel import syscalls as sc
from berth.runtime import process as proc
from berth.runtime.hooks import run_hooks
from berth.runtime.sync import Channel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Launch:
    """Everything the child needs, computed by the parent before fork."""

    def __init__(self, spec: dict[str, Any], rootfs: str, bundle: str, fifo: str, no_pivot: bool = False,
                 preserve_fds: int = 0, cgroup_paths: dict[str, str] | None = None) -> None:
        self.spec = spec
        self.rootfs = rootfs
        self.bundle = bundle
        self.fifo = fifo
        self.no_pivot = no_pivot
        self.preserve_fds = preserve_fds
        self.cgroup_paths = cgroup_paths or {}
        self.session_keyring = ""  # name of a new session keyring, "" with --no-new-keyring
        self.console_fd: int | None = None
        # The exec fifo, opened (O_PATH) by the parent: the child may no longer be able to reach the
        # state directory by path (a user namespace's root cannot search a 0700 --root).
        self.fifo_fd: int | None = None
        self.state_root: str | None = None  # the runtime's root: compiled seccomp filters are cached there
        self.listen_fds = 0  # socket-activation descriptors among the preserved ones: LISTEN_FDS
        self.userns = ""  # "", "new" or "join"
        self.userns_fd: int | None = None
        self.join: list[tuple[int, int]] = []  # (fd, CLONE_*) to setns
        self.unshare = 0
        self.fork_for_pid = False
        self.namespaces: dict[str, str] = {}


def child_main(launch: Launch, chan: Channel) -> None:
    """Entry point of the forked child; never returns."""
    try:
        proc.reset_signals()
        keep = {chan.read_fd, chan.write_fd, *(fd for fd, _ in launch.join)}
        keep.update(fd for fd in (launch.console_fd, launch.userns_fd, launch.fifo_fd) if fd is not None)
        proc.close_fds(launch.preserve_fds, keep)
        # What needs no namespace and no cgroup is done while the parent makes the cgroup.
        seccomp = proc.preload(launch.spec, launch.state_root)
        import berth.runtime.rootfs  # noqa: F401
        from berth.kernel.cgroups import enter_files

        go = chan.expect("G")
        enter_files(go["enter"])
        launch.cgroup_paths = go["paths"]
        if launch.userns == "new":
            sc.unshare(sc.CLONE_NEWUSER)
            chan.send("M")
            chan.expect("G")
        elif launch.userns_fd is not None:
            sc.setns(launch.userns_fd, sc.CLONE_NEWUSER)
        if launch.userns:
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        for fd, flag in launch.join:
            sc.setns(fd, flag)
        if launch.unshare:
            sc.unshare(launch.unshare)
        if launch.fork_for_pid:
            # The new init shares the channel: it must not speak before "P" is sent, or the parent
            # reads its "H" (or error) first. It waits for EOF on a gate its parent holds until then.
            gate_r, gate_w = os.pipe()
            pid = os.fork()
            if pid:
                os.close(gate_r)
                chan.send("P", pid)
                os._exit(0)
            os.close(gate_w)
            os.read(gate_r, 1)
            os.close(gate_r)
        _init(launch, chan, seccomp)
    except BaseException as e:
        chan.send_error(e)
        os._exit(1)


def _init(launch: Launch, chan: Channel, seccomp: Any) -> None:
    spec = launch.spec
    linux = spec.get("linux", {})
    process = spec["process"]
    proc.set_dumpable(False)
    ns = launch.namespaces
    if launch.session_keyring:
        try:
            sc.join_session_keyring(launch.session_keyring)
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EACCES, errno.EPERM, errno.EDQUOT):
                raise
    if "uts" in ns and not ns["uts"]:
        if "hostname" in spec:
            sc.sethostname(spec["hostname"])
        if "domainname" in spec:
            sc.setdomainname(spec["domainname"])
    for key, value in linux.get("sysctl", {}).items():
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(value)

    from berth.runtime.rootfs import RootfsBuilder

    rb = RootfsBuilder(spec, launch.rootfs, launch.bundle, userns=bool(launch.userns),
                       cgroupns="cgroup" in ns, cgroup_paths=launch.cgroup_paths)
    rb.prepare()
    rb.mount_all()
    rb.make_devices()
    rb.make_cwd(process["cwd"])
    chan.send("H")
    state = chan.expect("G")
    run_hooks(spec, "createContainer", state)
    rb.mask_paths(linux.get("maskedPaths", []))
    rb.readonly_paths(linux.get("readonlyPaths", []))
    slave = _console(launch, rb.root_fd, process) if process.get("terminal") else None
    proc.apply_limits(process, linux)
    fifo_fd = launch.fifo_fd if launch.fifo_fd is not None else os.open(launch.fifo, os.O_PATH | os.O_CLOEXEC)
    from berth.runtime import trampoline

    tramp_fd = trampoline.sealed_fd()
    rb.pivot(launch.no_pivot)
    rb.finish()
    proc.set_personality(linux)
    os.setsid()
    if slave is not None:
        from berth.runtime import console  # loaded by _console, before pivot_root

        console.take_terminal(slave)
    nnp = bool(process.get("noNewPrivileges"))
    if nnp:
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    else:
        proc.install_seccomp(seccomp, {**state, "status": "creating"})
    proc.switch_identity(process)
    env = proc.environment(process)
    if launch.listen_fds:
        env.update(LISTEN_FDS=str(launch.listen_fds), LISTEN_PID="1")
    proc.enter_cwd(process["cwd"])
    path = proc.resolve_executable(process["args"], env)
    chan.send("R")
    chan.close()
    try:
        # Blocks until ``start`` opens the fifo for reading.
        wfd = os.open(f"/proc/self/fd/{fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
        os.write(wfd, b"0")
        os.close(wfd)
        os.close(fifo_fd)
        state["status"] = "running"
        run_hooks(spec, "startContainer", state)
        if nnp:
            proc.install_seccomp(seccomp, state)
        trampoline.execve(tramp_fd, path, process["args"], env)
    except BaseException as e:
        os.write(2, f"berth-runtime: {e}\n".encode())
        os._exit(1 if not isinstance(e, OSError) else 127)


def _console(launch: Launch, root_fd: int, process: dict[str, Any]) -> int:
    """Open a pty in the container's devpts, bind its slave to /dev/console, send the master out."""
    from berth.runtime import console
    from berth.runtime.paths import ensure_in_root, fd_path, open_in_root

    master = open_in_root(root_fd, "/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY)
    slave = console.open_pty(master, process)
    target = ensure_in_root(root_fd, "/dev/console", is_dir=False)
    try:
        sc.mount(fd_path(slave), fd_path(target), None, sc.MS_BIND)
    finally:
        os.close(target)
    assert launch.console_fd is not None
    console.send_master(launch.console_fd, master, "/dev/console")
    return slave
