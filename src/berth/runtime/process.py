"""Turning the runtime's forked child into the container's process: identity, limits, exec.

Shared by the container's init and by ``exec``. The order matters and follows the kernel's rules:
rlimits and no_new_privs first; a seccomp filter before capabilities are dropped when it needs
CAP_SYS_ADMIN (no no_new_privs); the bounding set, then the uid switch with keep-caps, then the
final capability sets; the executable is resolved before the start barrier so that a missing
command fails ``create``, as it does with runc.
"""

from __future__ import annotations

import _signal as signal  # the C module: `signal` builds enums on import (~4 ms)
import errno
import os
import stat

from berth.errors import BerthError, CannotInvoke, CommandNotFound
from berth.kernel import syscalls as sc
from berth.oci.runtime_config import RLIMITS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_PERSONALITY = {"LINUX": 0x0000, "LINUX32": 0x0008}


def reset_signals() -> None:
    """Python ignores SIGPIPE and SIGXFSZ; ignored signals survive exec, so restore the defaults."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def apply_limits(process: dict[str, Any], linux: dict[str, Any]) -> None:
    for i, r in enumerate(process.get("rlimits", [])):
        # The spec's values are uint64: 2^64-1 (what engines send for "unlimited") is RLIM_INFINITY.
        soft, hard = (sc.RLIM_INFINITY if v >= 1 << 63 else v for v in (r["soft"], r["hard"]))
        try:
            sc.prlimit(RLIMITS[r["type"]], (soft, hard))
        except OSError as e:
            from berth.errors import InvalidArgument

            raise InvalidArgument(f"process.rlimits[{i}] ({r['type']}): {e}") from None
    if "oomScoreAdj" in process:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(process["oomScoreAdj"]))


def set_personality(linux: dict[str, Any]) -> None:
    """``linux.personality``; set last before the exec barrier, since LINUX32 changes what uname(2)
    reports and the runtime picks syscall numbers and its trampoline by machine."""
    persona = linux.get("personality")
    if persona:
        sc.personality(_PERSONALITY[persona["domain"]])


def environment(process: dict[str, Any]) -> dict[str, str]:
    env = dict(e.split("=", 1) for e in process.get("env", []))
    if "HOME" not in env:  # engines set it: /etc/passwd is read only when they did not
        env["HOME"] = _home_of(process["user"]["uid"])
    return env


def _home_of(uid: int) -> str:
    try:
        with open("/etc/passwd") as f:
            for line in f:
                parts = line.rstrip("\n").split(":")
                if len(parts) >= 6 and parts[2] == str(uid):
                    return parts[5] or "/"
    except OSError:
        pass
    return "/"


def resolve_executable(args: list[str], env: dict[str, str]) -> str:
    """Find args[0] as execvp would, inside the (already pivoted) root; errors as Docker reports them."""
    name = args[0]
    if "/" in name:
        candidates = [name]
    else:
        path = env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        candidates = [os.path.join(d or ".", name) for d in path.split(":")]
    denied = None
    for c in candidates:
        try:
            st = os.stat(c)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(c, os.X_OK):
            return c
        denied = c
    if denied is not None:
        raise CannotInvoke(f'exec: "{name}": permission denied')
    if "/" in name:
        raise CommandNotFound(f'exec: "{name}": stat {name}: no such file or directory')
    raise CommandNotFound(f'exec: "{name}": executable file not found in $PATH')


def switch_identity(process: dict[str, Any]) -> None:
    """Capabilities and uid/gid, in the one order that leaves exactly the configured sets."""
    from berth.kernel import caps

    spec_caps = process.get("capabilities") or {}
    sets = {k: caps.parse(spec_caps.get(k, []), f"process.capabilities.{k}") for k in
            ("bounding", "effective", "permitted", "inheritable", "ambient")}
    user = process["user"]
    caps.drop_bounding(sets["bounding"])
    caps.set_keepcaps(True)
    os.setgroups(user.get("additionalGids", []))
    os.setresgid(user["gid"], user["gid"], user["gid"])
    os.setresuid(user["uid"], user["uid"], user["uid"])
    caps.set_keepcaps(False)
    caps.apply(sets["effective"], sets["permitted"], sets["inheritable"])
    caps.set_ambient(sets["ambient"])
    if "umask" in user:
        os.umask(user["umask"])
    else:
        os.umask(0o022)


def enter_cwd(cwd: str) -> None:
    """chdir as the container user, then prove the directory is inside the container's root.

    A cwd reached through a descriptor leaked from the runtime (``/proc/self/fd/N``) would be a
    host directory; getcwd(2) reports such a directory as unreachable, so refuse it.
    """
    try:
        os.chdir(cwd)
    except OSError as e:
        raise OSError(e.errno, f"process.cwd {cwd}: {e.strerror}") from None
    try:
        here = os.getcwd()  # glibc fails with ENOENT for "(unreachable)/..."
    except OSError:
        here = ""
    if not here.startswith("/"):
        raise OSError(errno.EPERM, f"process.cwd {cwd}: resolves outside the container's root")


def close_fds(preserve: int, keep: set[int]) -> None:
    """Close every descriptor above 2+``preserve`` not in ``keep``, right after fork.

    Whatever the runtime had open (a lock on the state directory, an inherited descriptor of the
    caller's) must neither reach the container nor outlive the runtime in it.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 + preserve and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def preload(spec: dict[str, Any], state_root: str | None = None) -> Seccomp | None:
    """Load everything needed after entering the container while the host's filesystem is still
    visible: past pivot_root (or setns into its mount namespace) neither the dynamic loader nor
    Python's import system would find libcap, libseccomp or a not-yet-imported module.

    Returns the seccomp filter, compiled now (cached under ``state_root``) so that only its load
    is left for just before exec; None without ``linux.seccomp``."""
    import berth.runtime.trampoline  # noqa: F401
    from berth.kernel import caps

    caps.load()
    if spec.get("hooks", {}).get("startContainer"):
        import subprocess  # noqa: F401
    seccomp = spec.get("linux", {}).get("seccomp")
    if not seccomp:
        return None
    from berth.kernel.seccomp import prepare

    prepared = Seccomp(prepare(seccomp, os.path.join(state_root, ".seccomp") if state_root else None))
    if prepared.filter.notify:
        prepared.connect(seccomp["listenerPath"], seccomp.get("listenerMetadata"))
    return prepared


class Seccomp:
    """A prepared filter and, when a rule uses SCMP_ACT_NOTIFY, the connection to the seccomp agent
    at ``listenerPath``: made in ``preload`` because past pivot_root that path is out of reach,
    used once the filter is loaded to hand the agent the notify fd (as runc does)."""

    def __init__(self, prepared: Any) -> None:
        self.filter = prepared
        self.listener: Any = None
        self.metadata: str | None = None

    def connect(self, path: str, metadata: str | None) -> None:
        """Connect to the agent; an agent that cannot be reached fails the create, as with runc."""
        import _socket  # the C module: `socket` builds enums on import (~3 ms)

        from berth.oci import jsonc  # noqa: F401  (for send(), past pivot_root)

        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
        except OSError as e:
            sock.close()
            raise BerthError(f"linux.seccomp.listenerPath {path}: {e.strerror or e}") from None
        self.listener, self.metadata = sock, metadata

    def send(self, notify_fd: int, state: dict[str, Any]) -> None:
        """Send the container process state with ``notify_fd`` (SCM_RIGHTS), then close both."""
        import _socket
        import sys

        from berth.oci import jsonc

        message: dict[str, Any] = {"ociVersion": state["ociVersion"], "fds": ["seccompFd"], "pid": state["pid"]}
        if self.metadata is not None:
            message["metadata"] = self.metadata
        message["state"] = state
        data = jsonc.dumps(message).encode()
        rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, notify_fd.to_bytes(4, sys.byteorder))]
        try:
            if self.listener is None:
                raise BerthError("linux.seccomp.listenerPath: no connection to the agent")
            sent = self.listener.sendmsg([data], rights)
            while sent < len(data):  # the fd went with the first part; the rest is plain payload
                sent += self.listener.send(data[sent:])
        except OSError as e:
            raise BerthError(f"linux.seccomp.listenerPath: sending the seccomp fd failed: "
                             f"{e.strerror or e}") from None
        finally:
            self.close(notify_fd)

    def close(self, notify_fd: int | None = None) -> None:
        """Close the agent's connection and the notify fd: neither may reach the container."""
        if notify_fd is not None:
            os.close(notify_fd)
        if self.listener is not None:
            self.listener.close()
            self.listener = None


def install_seccomp(prepared: Seccomp | None, state: dict[str, Any] | None = None) -> None:
    """Load the filter ``preload`` compiled, if the config has one, and hand its notify fd with
    ``state`` (the container's state, with the pid of the process it is for) to the seccomp agent.
    Without ``state`` the fd is closed: notified syscalls then fail with ENOSYS."""
    if prepared is None:
        return
    notify_fd = prepared.filter.load()
    if notify_fd is not None and state is not None:
        prepared.send(notify_fd, state)
    else:
        prepared.close(notify_fd)


def set_dumpable(on: bool) -> None:
    """A non-dumpable process hides /proc/PID/{exe,fd,mem} from the container's other processes."""
    sc.prctl(sc.PR_SET_DUMPABLE, 1 if on else 0)


def forward_signals(pid: int) -> None:
    """From now on pass the signals a user sends the runtime on to ``pid`` (as runc does).

    Installed before the process is released (start, or the exec barrier): a signal sent as soon as
    the container runs must reach it, not kill the runtime.
    """

    def forward(sig: int, _frame: Any) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                signal.SIGWINCH):
        signal.signal(sig, forward)
